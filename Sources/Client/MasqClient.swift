import API
import ArgumentParser

/// `masq-client`: the root command holds only its configuration; each subcommand is a nested
/// type in its own file.
@main
struct MasqClient: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "masq-client",
        abstract: "Inspect and control masqd through its Unix socket.",
        discussion: "Shell completions: masq-client --generate-completion-script bash|zsh|fish.",
        version: masqVersion,
        subcommands: [Status.self, IPMasq.self, Conntrack.self, Explain.self, Config.self]
    )
}
