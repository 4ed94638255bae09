import API
import ArgumentParser
import Foundation

extension MasqClient {
    struct Conntrack: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The flows the datapath tracks, with their translation.",
            subcommands: [List.self, Flush.self])
    }
}

extension MasqClient.Conntrack {
    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List tracked flows (streamed as masqd reads them).")

        @OptionGroup var global: GlobalOptions
        @OptionGroup var filters: ConntrackFilterOptions

        @Option(help: "Stop after this many flows.")
        var limit: Int?

        func validate() throws {
            if let limit, limit < 1 { throw ValidationError("--limit: must be 1 or more") }
        }

        func run() async throws {
            var query = filters.filter.queryItems
            if let limit { query.append(("limit", String(limit))) }
            try await reportingErrors {
                let decoder = APIJSON.decoder()
                // Fixed widths: IPv4 endpoints fit, so rows print as they arrive.
                let columns = Columns(widths: [6, 10, 45, 45, 11, 7, 8, 13])
                if !global.json {
                    print(columns.line(["PROTO", "KIND", "ORIGINAL", "TRANSLATED", "STATE", "AGE", "EXPIRES", "PACKETS O/R", "DEVICE"]))
                }
                var count = 0
                try await global.client.streamLines(.conntrackList, query: query) { line in
                    count += 1
                    if global.json { return printRaw(line) }
                    let entry = try decoder.decode(ConntrackEntry.self, from: line)
                    print(columns.line([
                        entry.proto.rawValue, entry.kind.rawValue, entry.original.text, entry.translated.text,
                        entry.state, duration(entry.ageSeconds), duration(entry.expiresInSeconds),
                        "\(entry.originalCounters.packets)/\(entry.replyCounters?.packets ?? 0)",
                        entry.device ?? "if\(entry.ifindex)",
                    ]))
                }
                if !global.json { printError("\(count) flow\(count == 1 ? "" : "s")") }
            }
        }
    }

    struct Flush: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete the tracked flows matching the filters (all flows when none is given); needs root.")

        @OptionGroup var global: GlobalOptions
        @OptionGroup var filters: ConntrackFilterOptions

        func run() async throws {
            try await reportingErrors {
                let (result, raw) = try await global.client.request(
                    .conntrackFlush, query: filters.filter.queryItems, as: ConntrackDeleteResponse.self)
                if global.json { return printRaw(raw) }
                print("Deleted \(result.deleted) flow\(result.deleted == 1 ? "" : "s").")
            }
        }
    }
}
