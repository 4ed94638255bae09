import API
import ArgumentParser

extension MasqClient {
    struct IPMasq: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ipmasq",
            abstract: "The ip-masq-agent non-masquerade list, as the datapath holds it.",
            subcommands: [List.self],
            defaultSubcommand: List.self)
    }
}

extension MasqClient.IPMasq {
    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the non-masquerade CIDRs read back from the BPF maps.")

        @OptionGroup var global: GlobalOptions
        @OptionGroup var table: TableOptions

        func run() async throws {
            try await reportingErrors {
                let (list, raw) = try await global.client.request(.ipmasq, as: IPMasqResponse.self)
                if try global.printedDocument(raw) { return }
                if !table.noHeaders { print("IP PREFIX/ADDRESS") }
                for cidr in list.cidrs { print(cidr) }
            }
        }
    }
}
