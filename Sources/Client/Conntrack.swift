import API
import ArgumentParser
import Foundation

extension MasqClient {
    struct Conntrack: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The flows the datapath tracks, with their translation.",
            subcommands: [List.self, Flush.self, Events.self],
            defaultSubcommand: List.self)
    }
}

extension MasqClient.Conntrack {
    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List tracked flows (streamed as masqd reads them).",
            discussion: """
                The table shows the original source and destination and the address and port the flow \
                leaves with (SNAT); -o wide adds the kind, age, packet counts and device. -o json \
                prints NDJSON: one flow a line, each line a ConntrackEntry as GET /v1/conntrack \
                streams it with Accept: application/x-ndjson (not the API's paged JSON document). \
                -o yaml prints the same flows as a YAML stream, one document a flow.
                """)

        @OptionGroup var global: GlobalOptions
        @OptionGroup var table: TableOptions
        @OptionGroup var filters: ConntrackFilterOptions

        @Option(parsing: .unconditional, help: "Stop after this many flows.")
        var limit: Int?

        func validate() throws {
            if let limit, limit < 1 { throw ValidationError("--limit: must be 1 or more") }
        }

        /// Fixed widths, one set a family, so rows print as they arrive: every endpoint of the
        /// family fits ("255.255.255.255:65535", "[ffff:...:ffff]:65535"). masqd streams the
        /// IPv4 flows first, then the IPv6 ones, which get their own header. The narrow IPv4 table
        /// fits in 100 columns.
        static func narrow(_ family: IPFamily) -> Columns {
            let endpoint = family == .ipv6 ? 47 : 21
            return Columns(widths: [6, endpoint, endpoint, endpoint, 11, 7])
        }
        static let narrowHeader = ["PROTO", "SOURCE", "DESTINATION", "SNAT", "STATE", "EXPIRES"]
        static func wide(_ family: IPFamily) -> Columns {
            let tuple = family == .ipv6 ? 98 : 46
            return Columns(widths: [6, 10, tuple, tuple, 11, 7, 8, 13])
        }
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
            let (columns, header, row) = wide ? (Self.wide, Self.wideHeader, Self.wideRow) : (Self.narrow, Self.narrowHeader, Self.narrowRow)
            try await reportingErrors {
                let decoder = APIJSON.decoder()
                let headers = !format.isDocument && !table.noHeaders
                // The family whose widths the rows take, set by the first row: IPv4's until an
                // IPv6 flow comes, which starts the IPv6 part under a header of its own.
                var family: IPFamily?
                var count = 0
                // A write a chunk, which ends the client as SIGPIPE would once the reader is gone.
                var output = StreamOutput()
                try await global.client.streamLines(.conntrackList, query: query) { line in
                    count += 1
                    switch format {
                    case .json: output.raw(line)
                    case .yaml: try output.yamlDocument(line)
                    case .text, .wide:
                        let entry = try ConntrackEntry(ndjsonLine: line, decoder: decoder)
                        let widths: IPFamily = entry.family == .ipv6 || family == .ipv6 ? .ipv6 : .ipv4
                        if widths != family {
                            if headers { output.line((family == nil ? "" : "\n") + columns(widths).line(header)) }
                            family = widths
                        }
                        output.line(columns(widths).line(row(entry)))
                    }
                } chunkEnd: {
                    output.flush()
                }
                if headers && family == nil {
                    output.line(columns(.ipv4).line(header))
                    output.flush()
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
