import API
import ArgumentParser

extension MasqClient {
    struct Config: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show masqd's effective config and the ip-masq-agent config in force.")

        @OptionGroup var global: GlobalOptions
    }
}

extension MasqClient.Config {
    func run() async throws {
        try await reportingErrors {
            let (config, raw) = try await global.client.request(.config, as: ConfigResponse.self)
            if global.json { return printRaw(raw) }
            let rows = config.daemon.keyedValues.map { [$0.key + ":", $0.value] }
            let columns = Columns.fitting(rows)
            for row in rows { print(columns.line(row)) }
            print("")
            let agent = config.ipMasqAgent
            print("ip-masq-agent: \(agent.enabled ? "enabled" : "disabled"), \(agent.configPath), generation \(agent.generation)")
            if let error = agent.lastError { print("  last load failed: \(error)") }
            print("  non-masquerade CIDRs in force: \(agent.nonMasqueradeCIDRs.map(\.description).joined(separator: ", "))")
        }
    }
}
