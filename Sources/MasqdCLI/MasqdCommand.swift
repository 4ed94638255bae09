import API
import ArgumentParser

/// `masqd`: the root command holds only its configuration.
public struct MasqdCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "masqd",
        abstract: "The masq eBPF masquerading daemon.",
        version: masqVersion,
        subcommands: [Run.self, Uninstall.self],
        defaultSubcommand: Run.self
    )

    public init() {}
}
