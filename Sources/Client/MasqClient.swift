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
            for the streamed conntrack list and conntrack events only its start.

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
}
