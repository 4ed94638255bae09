import API
import ArgumentParser

extension MasqClient {
    struct Explain: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Say whether a packet would be masqueraded, and by which rule.")

        @OptionGroup var global: GlobalOptions

        @Option(help: ArgumentHelp("The packet's source address.", valueName: "address"), transform: Self.address)
        var src: IPAddress

        @Option(help: ArgumentHelp("The packet's destination address.", valueName: "address"), transform: Self.address)
        var dst: IPAddress

        @Option(help: "The protocol: tcp, udp, icmp or icmpv6.")
        var proto: ProtocolArgument = .tcp

        @Option(parsing: .unconditional, help: "The source port (ICMP: the echo id).")
        var sport: UInt16 = 0

        @Option(parsing: .unconditional, help: "The destination port.")
        var dport: UInt16 = 0

        @Option(help: "The device the packet leaves through (default: masqd's route lookup).")
        var device: String?

        static func address(_ text: String) throws -> IPAddress {
            guard let a = IPAddress(text) else { throw ValidationError("'\(text)' is not an IPv4 or IPv6 address") }
            return a
        }

        var query: ExplainQuery {
            ExplainQuery(src: src, dst: dst, proto: proto.value, sport: sport, dport: dport, device: device)
        }

        func validate() throws {
            if src.bitWidth != dst.bitWidth { throw ValidationError("--src and --dst must be of the same family") }
            // What masqd would refuse with 400 (an empty --device) is a usage error here.
            do {
                _ = try ExplainQuery(query: QueryParameters(items: Dictionary(uniqueKeysWithValues: query.queryItems)))
            } catch {
                throw ValidationError("--\(error.message)")
            }
        }
    }
}

extension MasqClient.Explain {
    func run() async throws {
        try await reportingErrors {
            let (answer, raw) = try await global.client.request(.explain, query: query.queryItems, as: ExplainResponse.self)
            if try global.printedDocument(raw) { return }
            print(labelled("Masquerade", answer.masquerade ? "yes" : "no"))
            print(labelled("Rule", answer.rule.rawValue + (answer.cidr.map { " (\($0))" } ?? "")))
            if let device = answer.device { print(labelled("Device", device)) }
            if let address = answer.snatAddress {
                print(labelled("SNAT address", address.description + (answer.snatPort.map { ":\($0)" } ?? "")))
            }
            print(labelled("Why", answer.reason))
        }
    }
}
