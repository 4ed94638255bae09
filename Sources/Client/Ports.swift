import API
import ArgumentParser
import Foundation

extension MasqClient {
    struct Ports: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Who holds the SNAT ports: each source's ports towards each remote, most first.",
            discussion: """
                Every translated flow holds one port of its destination's (SNAT address, remote, \
                remote port, protocol) tuple, and each tuple has the ports of snat-port-range. A row is \
                one source (a pod, or the node for its own flows) towards one remote port: the ports it \
                holds there and their share of the range (100% would leave no port for anyone else \
                towards that destination). Filters apply to the flows' original tuple. -o json and \
                -o yaml print GET /v1/ports as it came.
                """)

        @OptionGroup var global: GlobalOptions
        @OptionGroup var table: TableOptions
        @OptionGroup var filters: ConntrackFilterOptions

        @Option(parsing: .unconditional, help: "List this many holders, the busiest first (1-\(PortsQuery.maxTop)).")
        var top = PortsQuery.defaultTop

        func validate() throws {
            if !(1...PortsQuery.maxTop).contains(top) { throw ValidationError("--top: must be 1-\(PortsQuery.maxTop)") }
        }

        static let header = ["PROTO", "SOURCE", "DESTINATION", "PORTS", "RANGE SHARE"]

        static func row(_ holder: PortsResponse.Holder) -> [String] {
            [holder.proto.rawValue, holder.src.description, FlowTuple.endpoint(holder.dst, holder.dport),
             String(holder.ports), String(format: "%.1f%%", holder.rangeShare * 100)]
        }

        func run() async throws {
            let query = PortsQuery(filter: filters.filter, top: top)
            try await reportingErrors {
                let (ports, raw) = try await global.client.request(.ports, query: query.queryItems, as: PortsResponse.self)
                if try global.printedDocument(raw) { return }
                let rows = ports.holders.map(Self.row)
                let columns = Columns.fitting([Self.header] + rows)
                if !table.noHeaders { print(columns.line(Self.header)) }
                for row in rows { print(columns.line(row)) }
                if !table.noHeaders {
                    let range = ports.portRange
                    printError("\(ports.flows) translated flow\(ports.flows == 1 ? "" : "s"); snat-port-range \(range.min)-\(range.max) (\(range.size) ports a destination)"
                               + (ports.exact ? "" : "; counts past the tally's capacity are lower bounds"))
                }
            }
        }
    }
}
