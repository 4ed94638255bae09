import API
import ArgumentParser
import Foundation
import Yams

extension MasqClient {
    struct Config: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show masqd's effective config and the ip-masq-agent config in force.",
            discussion: """
                The text is YAML in masqd's config file keys (durations as 6h, 30s), usable as a \
                config file (keys not set are comments); the ip-masq-agent state follows as comments. -o json|yaml prints the \
                API's document.
                """)

        @OptionGroup var global: GlobalOptions
    }
}

extension MasqClient.Config {
    func run() async throws {
        try await reportingErrors {
            let (config, raw) = try await global.client.request(.config, as: ConfigResponse.self)
            if try global.printedDocument(raw) { return }
            print("# masqd's config in force, as its config file would set it")
            print(try Self.yaml(config.daemon), terminator: "")
            let agent = config.ipMasqAgent
            print("# ip-masq-agent: \(agent.enabled ? "enabled" : "disabled"), \(agent.configPath), generation \(agent.generation)")
            if let error = agent.lastError {
                print("#   last load failed: \(error.replacingOccurrences(of: "\n", with: " "))")
            }
            let cidrs = agent.nonMasqueradeCIDRs.map(\.description)
            print("#   non-masquerade CIDRs in force: \(cidrs.isEmpty ? "none" : cidrs.joined(separator: ", "))")
        }
    }

    /// The keys as a YAML mapping in the config file's order: scalars plain where YAML allows
    /// (Yams quotes the rest), lists in flow style as people write them (`pod-cidrs:
    /// [10.244.0.0/16]`); an unset key is a comment, as masqd reads a null as an empty value.
    static func yaml(_ daemon: ConfigResponse.Daemon) throws -> String {
        func plain(_ text: String) -> Node { .scalar(Node.Scalar(text, .implicit, .plain)) }
        return try daemon.keyedValues.map { key, value in
            let node: Node
            switch value {
            case .scalar(let text): node = plain(text)
            case .list(let items): node = .sequence(Node.Sequence(items.map(plain), .implicit, .flow))
            case .unset: return "# \(key): (not set)\n"
            }
            return try Yams.serialize(node: .mapping(Node.Mapping([(plain(key), node)], .implicit, .block)),
                                      width: -1, allowUnicode: true)
        }.joined()
    }
}
