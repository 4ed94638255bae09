import API
import ArgumentParser
import Foundation

extension MasqClient {
    struct Conntrack: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The flows the datapath tracks, with their translation.",
            subcommands: [List.self, Flush.self, Events.self])
    }
}

extension MasqClient.Conntrack {
    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List tracked flows (streamed as masqd reads them).",
            discussion: """
                The table shows the original source and destination and the address and port the flow \\
                leaves with (SNAT); -o wide adds the kind, age, packet counts and device. -o json \\
                prints NDJSON: one flow a line, each line a ConntrackEntry as GET /v1/conntrack \\
                streams it with Accept: application/x-ndjson (not the API's paged JSON document). \\
                -o yaml prints the same flows as a YAML stream, one document a flow.
                """)

        @OptionGroup var global: GlobalOptions
        @OptionGroup var table: TableOptions
        @OptionGroup var filters: ConntrackFilterOptions

        @Option(help: "Stop after this many flows.")
        var limit: Int?

        func validate() throws {
            if let limit, limit < 1 { throw ValidationError("--limit: must be 1 or more") }
        }

        /// Fixed widths (IPv4 endpoints fit) so rows print as they arrive; the narrow table fits
        /// in 100 columns.
        static let narrow = Columns(widths: [6, 21, 21, 21, 11, 7])
        static let narrowHeader = ["PROTO", "SOURCE", "DESTINATION", "SNAT", "STATE", "EXPIRES"]
        static let wide = Columns(widths: [6, 10, 45, 45, 11, 7, 8, 13])
        static let wideHeader = ["PROTO", "KIND", "ORIGINAL", "TRANSLATED", "STATE", "AGE", "EXPIRES", "PACKETS O/R", "DEVICE"]

        static func narrowRow(_ entry: ConntrackEntry) -> [String] {
            let snat: String
            switch entry.kind {
            case .host: snat = "(host flow)"
            case .inbound: snat = "(inbound)"
            case .masquerade, .unknown: snat = FlowTuple.endpoint(entry.translated.src, entry.translated.sport)
            }
            return [entry.proto.rawValue, FlowTuple.endpoint(entry.original.src, entry.original.sport),
                    FlowTuple.endpoint(entry.original.dst, entry.original.dport), snat, entry.state.rawValue,
                    duration(entry.expiresInSeconds)]
        }

        static func wideRow(_ entry: ConntrackEntry) -> [String] {
            [entry.proto.rawValue, entry.kind.rawValue, entry.original.text, entry.translated.text,
             entry.state.rawValue, duration(entry.ageSeconds), duration(entry.expiresInSeconds),
             "\(entry.originalCounters.packets)/\(entry.replyCounters?.packets ?? 0)",
             entry.device ?? "if\(entry.ifindex)"]
        }

        func run() async throws {
            var query = filters.filter.queryItems
            if let limit { query.append(("limit", String(limit))) }
            let format = global.output
            let wide = format == .wide
            let (columns, row) = wide ? (Self.wide, Self.wideRow) : (Self.narrow, Self.narrowRow)
            try await reportingErrors {
                let decoder = APIJSON.decoder()
                if !format.isDocument && !table.noHeaders {
                    print(columns.line(wide ? Self.wideHeader : Self.narrowHeader))
                }
                var count = 0
                try await global.client.streamLines(.conntrackList, query: query) { line in
                    count += 1
                    switch format {
                    case .json: printRaw(line)
                    case .yaml: print("---\n" + (try YAMLDocument(json: line).text), terminator: "")
                    case .text, .wide: print(columns.line(row(try decoder.decode(ConntrackEntry.self, from: line))))
                    }
                }
                if !format.isDocument && !table.noHeaders { printError("\(count) flow\(count == 1 ? "" : "s")") }
            }
        }
    }

    struct Flush: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete the tracked flows matching the filters (every flow with --all); needs root.")

        @OptionGroup var global: GlobalOptions
        @OptionGroup var filters: ConntrackFilterOptions

        @Flag(help: "Delete every tracked flow (required when no filter is given).")
        var all = false

        func validate() throws {
            if filters.isEmpty && !all {
                throw ValidationError("no filter given: pass --all to delete every tracked flow, or filter (--src, --dst, --proto ...)")
            }
            if !filters.isEmpty && all {
                throw ValidationError("--all deletes every flow and cannot be combined with filters")
            }
        }

        func run() async throws {
            try await reportingErrors {
                let (result, raw) = try await global.client.request(
                    .conntrackFlush, query: filters.filter.queryItems, as: ConntrackDeleteResponse.self)
                if try global.printedDocument(raw) { return }
                print("Deleted \(result.deleted) flow\(result.deleted == 1 ? "" : "s").")
            }
        }
    }
}
