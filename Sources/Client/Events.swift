import API
import ArgumentParser
import Foundation

extension MasqClient.Conntrack {
    struct Events: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print flow events as they happen, like conntrack -E.",
            discussion: """
                One line an event: [NEW] a flow was created (original tuple => the source it leaves \
                with), [DESTROY] it expired or was deleted, [REPAIR] the GC removed a lone half of \
                one, [FAIL] a new flow got no port or no table room, [DROP] the datapath dropped a \
                packet for a NAT reason. Filters apply to the original tuple (a drop's: the packet's \
                own). Runs until interrupted (or --limit, --timeout). When this client reads slower than events \
                come, masqd drops some and says how many; they are reported on stderr. -o json prints \
                the raw NDJSON lines of GET /v1/events (lost and heartbeat lines included), -o yaml \
                the same lines as a YAML stream, one document a line.
                """)

        @OptionGroup var global: GlobalOptions
        @OptionGroup var filters: ConntrackFilterOptions

        @Option(help: ArgumentHelp(
            "Only these event types, comma-separated: \(FlowEvent.EventType.filterable.map(\.rawValue).joined(separator: ", ")).",
            valueName: "types"))
        var types: String?

        @Option(parsing: .unconditional, help: "Stop after this many events.")
        var limit: Int?

        @Option(parsing: .unconditional, help: "Stop after this many seconds.")
        var timeout: Int?

        func validate() throws {
            if let limit, limit < 1 { throw ValidationError("--limit: must be 1 or more") }
            if let timeout, !(1...EventsQuery.maxTimeout).contains(timeout) {
                throw ValidationError("--timeout: must be 1-\(EventsQuery.maxTimeout) seconds")
            }
            if let types {
                do {
                    _ = try EventsQuery(query: QueryParameters(items: ["types": types]))
                } catch {
                    throw ValidationError("--types: '\(types)' is not valid (expected a comma-separated list of \(FlowEvent.EventType.filterable.map(\.rawValue).joined(separator: ", ")))")
                }
            }
        }

        func run() async throws {
            var query = filters.filter.queryItems
            if let types { query.append(("types", types)) }
            if let timeout { query.append(("timeout", String(timeout))) }
            let format = global.output
            try await reportingErrors {
                let decoder = APIJSON.decoder()
                var count = 0
                var output = StreamOutput()
                defer { output.flush() }
                do {
                    try await global.client.streamLines(.events, query: query) { line in
                        let event = try FlowEvent(ndjsonLine: line, decoder: decoder)
                        switch format {
                        case .json: output.raw(line)
                        case .yaml: try output.yamlDocument(line)
                        case .text, .wide:
                            if let text = Self.line(event) {
                                output.line(text)
                            } else if event.type == .lost {
                                output.flush() // the lines before the gap first
                                printError("masq-client: \(event.count ?? 0) events lost (this client read too slowly)")
                            }
                        }
                        if event.type == .heartbeat { output.endIfReaderGone() }
                        if event.type != .lost && event.type != .heartbeat { count += 1 }
                        if let limit, count >= limit { throw LimitReached() }
                    } chunkEnd: {
                        output.flush()
                    }
                } catch is LimitReached {
                    return
                }
            }
        }

        private struct LimitReached: Error {}

        /// The conntrack -E style line of an event; nil for lost and heartbeat lines.
        static func line(_ event: FlowEvent) -> String? {
            let tag: String
            switch event.type {
            case .new: tag = "[NEW]"
            case .expired, .deleted: tag = "[DESTROY]"
            case .repaired: tag = "[REPAIR]"
            case .allocationFailed: tag = "[FAIL]"
            case .drop: tag = "[DROP]"
            case .lost, .heartbeat, .unknown: return nil
            }
            var text = "\(tag) \(event.proto?.rawValue ?? "?")"
            if let original = event.original { text += " " + original.text }
            if let translated = event.translated, event.kind != .inbound {
                text += " => " + FlowTuple.endpoint(translated.src, translated.sport)
            }
            var notes: [String] = []
            if let kind = event.kind, kind != .masquerade, event.type != .drop { notes.append(kind.rawValue) }
            switch event.type {
            case .new:
                if event.keptPort == false { notes.append("port changed after \(event.candidates ?? 0) candidates") }
            case .expired: notes.append("expired" + (event.state.map { " \($0.rawValue)" } ?? ""))
            case .deleted: notes.append("deleted")
            case .allocationFailed, .drop:
                if let reason = event.reason { notes.append(reason) }
                if let candidates = event.candidates { notes.append("\(candidates) candidates") }
                if let direction = event.direction { notes.append(direction.rawValue) }
            default: break
            }
            if let device = event.device { notes.append(device) }
            return notes.isEmpty ? text : text + " (\(notes.joined(separator: ", ")))"
        }
    }
}
