@preconcurrency import Glibc
import API
import ArgumentParser
import Foundation

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

    /// `run` is the default subcommand and takes no arguments of its own, so a first argument
    /// that is not an option names a subcommand: an unknown one is reported as such (exit 64,
    /// EX_USAGE), not as a usage error of `run`.
    public static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if let problem = unknownSubcommand(arguments) {
            FileHandle.standardErrorLine("masqd: \(problem)")
            Glibc.exit(64)
        }
        await main(arguments)
    }

    static func unknownSubcommand(_ arguments: [String]) -> String? {
        guard let first = arguments.first, !first.hasPrefix("-") else { return nil }
        let known = configuration.subcommands.map { $0._commandName } + ["help"]
        guard !known.contains(first) else { return nil }
        return "unknown subcommand '\(first)' (subcommands: \(known.joined(separator: ", ")); see masqd --help)"
    }
}
