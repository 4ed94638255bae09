import API
import ArgumentParser

/// `masq-client`: the root command holds only its configuration and the global options; each
/// subcommand is a nested type in its own file.
@main
struct MasqClient: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "masq-client",
        abstract: "Inspect and control masqd through its Unix socket.",
        discussion: """
            --socket, --request-timeout and -o go before or after the subcommand (masq-client \
            --socket PATH status, masq-client status --socket PATH); MASQ_SOCKET names the socket \
            when --socket is not given (an empty MASQ_SOCKET counts as unset, an empty --socket is a \
            usage error). --request-timeout bounds each request: connecting and the whole answer, \
            for the streamed conntrack list and conntrack events only its start. An option given \
            twice is a usage error (the API refuses a repeated parameter too).

            Exit status: 0 success (status: masqd is healthy); 1 masqd is unhealthy (its healthz \
            answers Failure), cannot be reached, did not answer within --request-timeout, or a \
            request failed; 64 usage error.

            Shell completions: masq-client --generate-completion-script bash|zsh|fish.
            """,
        version: masqVersion,
        subcommands: [Status.self, IPMasq.self, Conntrack.self, Ports.self, Explain.self, Config.self]
    )

    /// Parsed here so that the options work before the subcommand; the subcommands read the same
    /// parsed values through their own `@OptionGroup`.
    @OptionGroup var global: GlobalOptions

    /// ArgumentParser's `main`, refusing a repeated option (one line, exit 64) once the line
    /// parses: its own errors, help included, come first.
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        do {
            var command = try await asyncParseAsRoot(arguments)
            if let repeated = repeatedOption(in: arguments) {
                printError("masq-client: \(repeated): given more than once")
                exit(withError: ExitCode.validationFailure)
            }
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }

    /// The first option named more than once in a parsed command line (ArgumentParser keeps the
    /// last value silently): long names up to an `=`, short ones as their long name, nothing
    /// after `--`. Values that start with `-` are left: the line parsed, so every value option
    /// given one (`--request-timeout -1`) refused it, and none is a letter's short name.
    static func repeatedOption(in arguments: [String]) -> String? {
        var seen: Set<String> = []
        for argument in arguments.prefix(while: { $0 != "--" }) {
            let name: String
            if argument.hasPrefix("--") {
                name = String(argument.prefix(while: { $0 != "=" }))
            } else if argument.hasPrefix("-"), let letter = argument.dropFirst().first, letter.isLetter {
                name = shortNames[letter] ?? "-\(letter)"
            } else {
                continue
            }
            if !seen.insert(name).inserted { return name }
        }
        return nil
    }

    /// The short options, by the long name each stands for.
    private static let shortNames: [Character: String] = ["o": "--output", "h": "--help"]
}
