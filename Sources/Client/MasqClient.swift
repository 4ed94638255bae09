import API
import ArgumentParser

@main
struct MasqClient: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "masq-client",
        abstract: "Inspect and control masqd through its Unix socket.",
        version: masqVersion
    )
}
