import API
@testable import ControlServer
@testable import Daemon
import Datapath
import Foundation
import Testing
import Yams

extension LiveAPITests {
/// masq-client, the built binary, as people type it, against a live server.
@Suite("masq-client", .serialized)
struct ClientTests {
    /// EX_USAGE, what ArgumentParser exits with on a usage error.
    static let usage: Int32 = 64

    @Test("an unreachable daemon is one line naming the socket and exit status 1, --brief too")
    func unreachable() async throws {
        let client = try builtBinary("masq-client")
        for argv in [["status"], ["status", "--brief"], ["--socket", "/nonexistent/masqd.sock", "ipmasq", "list"]] {
            let result = try await run([client] + argv, environment: ["MASQ_SOCKET": "/nonexistent/masqd.sock"])
            #expect(result.status == 1, "\(argv)")
            let lines = result.stderr.split(separator: "\n")
            #expect(lines.count == 1, "\(argv): \(result.stderr)")
            #expect(lines.first?.hasPrefix("masq-client: cannot reach masqd at /nonexistent/masqd.sock") == true, "\(argv)")
            #expect(result.stdout.isEmpty, "\(argv)")
        }
    }

    @Test("--socket and -o work before and after the subcommand; --socket beats MASQ_SOCKET; help names them")
    func globalOptions() async throws {
        let client = try builtBinary("masq-client")
        try await LiveAPI.with { api in
            let socket = api.socketPath
            let elsewhere = ["MASQ_SOCKET": "/nonexistent/masqd.sock"]
            for argv in [["--socket", socket, "status"], ["status", "--socket", socket], ["--socket=\(socket)", "status"],
                         ["-o", "json", "--socket", socket, "status"], ["--socket", socket, "status", "--output", "json"]] {
                let result = try await run([client] + argv, environment: elsewhere)
                #expect(result.status == 0, "\(argv): \(result.stderr)")
                #expect(result.stdout.contains("Masquerading:") || result.stdout.hasPrefix("{"), "\(argv): \(result.stdout)")
            }
            let jsonFirst = try await run([client, "-o", "json", "ipmasq", "list"], environment: ["MASQ_SOCKET": socket])
            let jsonLast = try await run([client, "ipmasq", "list", "-o", "json"], environment: ["MASQ_SOCKET": socket])
            #expect(jsonFirst.status == 0 && jsonFirst.stdout == jsonLast.stdout, "\(jsonFirst) \(jsonLast)")
            #expect((try? APIJSON.decoder().decode(IPMasqResponse.self, from: Data(jsonFirst.stdout.utf8))) != nil, "\(jsonFirst.stdout)")
            // Between the two levels of a nested command too.
            let nested = try await run([client, "conntrack", "--socket", socket, "list", "-o", "json"])
            #expect(nested.status == 0, "\(nested.stderr)")
        }

        let help = try await run([client, "--help"])
        #expect(help.status == 0)
        for text in ["--socket <path>", "--request-timeout <seconds>", "-o, --output <format>", "MASQ_SOCKET", "Exit status", "64 usage"] {
            #expect(help.stdout.contains(text), "\(text) missing from:\n\(help.stdout)")
        }
        let statusHelp = try await run([client, "status", "--help"])
        #expect(statusHelp.stdout.contains("--brief") && statusHelp.stdout.contains("--socket <path>"), "\(statusHelp.stdout)")

        for argv in [["status", "--bogus"], ["-o", "xml", "status"], ["frobnicate"], ["conntrack", "list", "--limit", "0"]] {
            let result = try await run([client] + argv, environment: ["MASQ_SOCKET": "/nonexistent/masqd.sock"])
            #expect(result.status == Self.usage, "\(argv): \(result)")
        }
    }

    @Test("an empty --socket, a bad --request-timeout and an empty explain --device are usage errors; an empty MASQ_SOCKET is unset")
    func emptyValues() async throws {
        let client = try builtBinary("masq-client")
        let nowhere = ["MASQ_SOCKET": "/nonexistent/masqd.sock"]
        for (argv, message) in [
            (["--socket", "", "status"], "--socket: must not be empty"),
            (["status", "--socket="], "--socket"),
            (["--request-timeout", "-1", "status"], "--request-timeout: must be 0 (no limit) to 86400 seconds"),
            (["status", "--request-timeout", "nan"], "--request-timeout: must be 0"),
            (["--request-timeout", "soon", "status"], "--request-timeout"),
            (["explain", "--src", "10.0.0.1", "--dst", "192.0.2.1", "--device", ""], "--device: must not be empty"),
        ] {
            let result = try await run([client] + argv, environment: nowhere)
            #expect(result.status == Self.usage && result.stderr.contains(message), "\(argv): \(result)")
        }
        // An empty MASQ_SOCKET picks the default socket (a masqd may run there), not the empty path.
        let unset = try await run([client, "status", "--brief"], environment: ["MASQ_SOCKET": ""])
        #expect(!unset.stderr.contains("masqd at :") && (unset.status == 0 || unset.stderr.contains("masqd at /run/masq/masqd.sock")),
                "\(unset)")
    }

    @Test("an option given twice is a usage error naming it, before any request (ArgumentParser would keep the last)")
    func repeatedOption() async throws {
        let client = try builtBinary("masq-client")
        let nowhere = ["MASQ_SOCKET": "/nonexistent/masqd.sock"]
        for (argv, option) in [
            (["conntrack", "flush", "--sport", "20003", "--sport", "20004"], "--sport"),
            (["conntrack", "list", "--proto=tcp", "--family", "ipv4", "--proto", "udp"], "--proto"),
            (["conntrack", "events", "--src", "10.0.0.1", "--src=10.0.0.2"], "--src"),
            (["conntrack", "events", "--types", "new", "--types", "deleted"], "--types"),
            (["ports", "--top", "5", "--top", "6"], "--top"),
            (["explain", "--src", "10.0.0.1", "--dst", "192.0.2.1", "--dport", "80", "--dport", "81"], "--dport"),
            (["-o", "json", "status", "--output", "yaml"], "--output"),
            (["conntrack", "flush", "--all", "--all"], "--all"),
        ] {
            let result = try await run([client] + argv, environment: nowhere)
            #expect(result.status == Self.usage && result.stderr == "masq-client: \(option): given more than once\n" && result.stdout.isEmpty,
                    "\(argv): \(result)")
        }
        // The same value for two options is no repeat: the request goes (and finds no masqd).
        let distinct = try await run([client, "conntrack", "flush", "--sport", "20003", "--dport", "20003"], environment: nowhere)
        #expect(distinct.status == 1 && distinct.stderr.contains("cannot reach masqd"), "\(distinct)")
    }

    @Test("status reads a body whose counters carry fields that are no counters (a later masqd's)")
    func statusUnknownCounters() async throws {
        let client = try builtBinary("masq-client")
        let status = String(decoding: try ContractTests.statusWithUnknownCounters(), as: UTF8.self)
        let health = String(decoding: try APIJSON.encoder().encode(ContractTests.status.health), as: UTF8.self)
        let later = try FakeSocket { connection in
            let body = FakeSocket.readRequest(connection).hasPrefix("GET /v1/healthz ") ? health : status
            FakeSocket.send(connection, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
        }
        defer { later.stop() }
        let result = try await run([client, "--socket", later.path, "status"])
        #expect(result.status == 0 && result.stdout.contains("Masquerading:") && !result.stdout.contains("zz"), "\(result)")
    }

    @Test("--request-timeout: a socket that never answers is one line naming it and exit 1, for plain and streamed commands")
    func requestTimeout() async throws {
        let client = try builtBinary("masq-client")
        // Accepts, reads the request and never answers.
        let silent = try FakeSocket { connection in FakeSocket.drain(connection) }
        defer { silent.stop() }
        for argv in [["--request-timeout", "1", "status", "--brief"], ["conntrack", "events", "--request-timeout", "0.5"],
                     ["conntrack", "list", "--request-timeout", "1", "-o", "yaml"], ["--request-timeout", "1", "config"]] {
            let result = try await run([client, "--socket", silent.path] + argv)
            let within = argv[argv.firstIndex(of: "--request-timeout")! + 1]
            #expect(result.status == 1 && result.stdout.isEmpty, "\(argv): \(result)")
            #expect(result.stderr == "masq-client: masqd at \(silent.path) did not answer within \(within) s\n", "\(argv): \(result)")
        }
        // A head, then half a body: a plain answer must come whole within the time.
        let stalled = try FakeSocket { connection in
            FakeSocket.readRequest(connection)
            FakeSocket.send(connection, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"state\"")
            FakeSocket.drain(connection)
        }
        defer { stalled.stop() }
        let half = try await run([client, "--socket", stalled.path, "--request-timeout", "1", "status", "--brief"])
        #expect(half.status == 1 && half.stderr.hasSuffix("did not answer within 1 s\n"), "\(half)")

        // A stream that has begun may last longer than the timeout: it only bounds the start.
        try await LiveAPI.with { api in
            let events = try await run([client, "--socket", api.socketPath, "--request-timeout", "2", "conntrack", "events", "--timeout", "4"])
            #expect(events.status == 0 && events.stderr.isEmpty, "\(events)")
        }
    }

    @Test("a connection that fails midway, a peer that is not HTTP, a socket path too long, a socket not ours: one line naming the socket, exit 1")
    func connectionFailures() async throws {
        let client = try builtBinary("masq-client")
        func failure(_ socket: String, _ argv: [String], runAs prefix: [String] = []) async throws -> String {
            let result = try await run(prefix + [client, "--socket", socket] + argv)
            #expect(result.status == 1, "\(argv): \(result)")
            let lines = result.stderr.split(separator: "\n", omittingEmptySubsequences: false)
            #expect(lines.count == 2 && lines[1].isEmpty, "\(argv): more than one line: \(result.stderr)")
            return result.stderr
        }

        // masqd stops mid-stream: one line of the stream, then the connection ends between chunks.
        let cut = try FakeSocket { connection in
            let line = "{\"type\":\"heartbeat\"}\n"
            FakeSocket.readRequest(connection)
            FakeSocket.send(connection, "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
                            + String(line.utf8.count, radix: 16) + "\r\n" + line + "\r\n")
        }
        defer { cut.stop() }
        for argv in [["conntrack", "events"], ["conntrack", "list", "-o", "json"]] {
            let text = try await failure(cut.path, argv)
            #expect(text == "masq-client: masqd at \(cut.path) closed the stream before its end (masqd stopped or failed mid-answer)\n", "\(argv): \(text)")
        }

        // Closed with the request unread: the client's read fails with ECONNRESET.
        let reset = try FakeSocket { connection in
            var ready = pollfd(fd: connection, events: Int16(POLLIN), revents: 0)
            _ = poll(&ready, 1, 5_000)
        }
        defer { reset.stop() }
        let resetText = try await failure(reset.path, ["status"])
        #expect(resetText == "masq-client: masqd at \(reset.path): connection lost (Connection reset by peer)\n", "\(resetText)")

        let garbage = try FakeSocket { connection in
            FakeSocket.readRequest(connection)
            FakeSocket.send(connection, "hello\n")
        }
        defer { garbage.stop() }
        let garbageText = try await failure(garbage.path, ["ipmasq", "list"])
        #expect(garbageText == "masq-client: masqd at \(garbage.path): not an HTTP answer (is this masqd's socket?)\n", "\(garbageText)")

        let long = "/tmp/" + String(repeating: "d", count: 103) + "/masqd.sock"
        let longText = try await failure(long, ["status"])
        #expect(longText == "masq-client: cannot reach masqd at \(long): socket path too long (\(long.utf8.count) bytes, max 103)\n", "\(longText)")

        // A socket of mode 0660 and group root, reached by uid 65534: the hint is the group, not
        // whether masqd runs.
        let locked = try FakeSocket { connection in FakeSocket.drain(connection) }
        defer { locked.stop() }
        #expect(chmod(locked.path, 0o660) == 0 && chown(locked.path, 0, 0) == 0)
        let nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        let denied = try await failure(locked.path, ["status"], runAs: nobody)
        #expect(denied == "masq-client: cannot reach masqd at \(locked.path): permission denied: masq-client needs root, or membership of masqd's socket-group ('root')\n",
                "\(denied)")
    }

    @Test("a negative number is a bad value of its option, not a missing one; conntrack alone lists, as ipmasq does")
    func negativeNumbersAndDefaults() async throws {
        let client = try builtBinary("masq-client")
        let nowhere = ["MASQ_SOCKET": "/nonexistent/masqd.sock"]
        for (argv, message) in [
            (["conntrack", "list", "--limit", "-5"], "--limit: must be 1 or more"),
            (["conntrack", "events", "--timeout", "-3"], "--timeout: must be 1-"),
            (["conntrack", "list", "--sport", "-1"], "The value '-1' is invalid for '--sport <sport>'"),
            (["conntrack", "flush", "--dport", "-80"], "The value '-80' is invalid for '--dport <dport>'"),
            (["explain", "--src", "10.0.0.1", "--dst", "192.0.2.1", "--dport", "-1"], "The value '-1' is invalid for '--dport <dport>'"),
            (["ports", "--top", "-2"], "--top: must be 1-"),
        ] {
            let result = try await run([client] + argv, environment: nowhere)
            #expect(result.status == Self.usage && result.stderr.contains(message), "\(argv): \(result)")
        }
        try await LiveAPI.with { api in
            let env = ["MASQ_SOCKET": api.socketPath]
            let list = try await run([client, "conntrack", "list", "-o", "json"], environment: env)
            let alone = try await run([client, "conntrack", "-o", "json"], environment: env)
            #expect(list.status == 0 && alone.status == 0 && alone.stdout == list.stdout, "\(alone) \(list)")
        }
    }

    @Test("conntrack events | head -1 ends by the next heartbeat once head has gone, with no event after")
    func eventsReaderGone() async throws {
        let client = try builtBinary("masq-client")
        try await LiveAPI.with { api in
            try await api.fillFlows(1)
            async let piped = run(["/bin/bash", "-c", "set -o pipefail; '\(client)' conntrack events | head -1"],
                                  environment: ["MASQ_SOCKET": api.socketPath], timeout: .seconds(40))
            try await Task.sleep(for: .seconds(2))
            _ = try await api.delete("/v1/conntrack")
            let result = try await piped
            // 141: the client ended as SIGPIPE ends a program (a heartbeat comes every 10 s).
            #expect(result.status == 141 && result.stdout.contains("[DESTROY]"), "\(result)")
        }
    }

    @Test("every command's help is prose: no line of it ends with a stray backslash")
    func helpTexts() async throws {
        let client = try builtBinary("masq-client")
        // Walks the command tree as `--help` lists it (SUBCOMMANDS: two-space indented names).
        var pending: [[String]] = [[]]
        var seen = 0
        while let path = pending.popLast() {
            let help = try await run([client] + path + ["--help"])
            #expect(help.status == 0, "\(path): \(help)")
            seen += 1
            for line in help.stdout.split(separator: "\n") where line.hasSuffix("\\") {
                Issue.record("masq-client \(path.joined(separator: " ")) --help: \"\(line)\"")
            }
            // The section's own lines only (it ends at the first blank line), two levels deep.
            guard path.count < 2, let start = help.stdout.range(of: "SUBCOMMANDS:\n") else { continue }
            for line in help.stdout[start.upperBound...].split(separator: "\n", omittingEmptySubsequences: false) {
                if line.isEmpty { break }
                guard line.hasPrefix("  "), !line.hasPrefix("   "),
                      let name = line.split(separator: " ").first.map(String.init),
                      name != "help", name.allSatisfy({ $0.isLowercase || $0 == "-" }) else { continue }
                pending.append(path + [name])
            }
        }
        #expect(seen >= 8, "walked only \(seen) commands")
    }

    @Test("status names each device's family it does not masquerade, and why")
    func missingFamily() async throws {
        let client = try builtBinary("masq-client")
        try await LiveAPI.with { api in
            let env = ["MASQ_SOCKET": api.socketPath]
            let line = "lo masquerades no IPv6: no usable global IPv6 address"
            let v4Only = try await run([client, "status"], environment: env)
            #expect(v4Only.stdout.contains(line) && !v4Only.stdout.contains("masquerades no IPv4"), "\(v4Only.stdout)")

            api.status.update { $0.applied?.devices[0].snatV6 = IPv6Address("fd00:50::2") }
            let dualStack = try await run([client, "status"], environment: env)
            #expect(!dualStack.stdout.contains("masquerades no"), "\(dualStack.stdout)")

            api.status.update { $0.applied?.devices[0].snatV6 = nil; $0.applied?.ipv6Enabled = false }
            let ipv6Off = try await run([client, "status"], environment: env)
            #expect(!ipv6Off.stdout.contains("masquerades no"), "\(ipv6Off.stdout)")
        }
    }

    @Test("status exits as healthz answers: 0 Ok, 1 Failure; --brief prints that one line")
    func healthExitCodes() async throws {
        let client = try builtBinary("masq-client")
        try await LiveAPI.with { api in
            let env = ["MASQ_SOCKET": api.socketPath]
            let ok = try await run([client, "status"], environment: env)
            #expect(ok.status == 0, "\(ok)")
            #expect(ok.stdout.contains("\nHealth:         Ok\n"), "\(ok.stdout)")
            let okBrief = try await run([client, "status", "--brief"], environment: env)
            #expect(okBrief.status == 0 && okBrief.stdout == "Ok\n", "\(okBrief)")

            // Not attached: healthz answers Failure with 503.
            api.status.update { $0.ready = false }
            let failure = try await run([client, "status"], environment: env)
            #expect(failure.status == 1, "\(failure)")
            #expect(failure.stdout.contains("\nHealth:         Failure (the datapath is not attached yet)\n"), "\(failure.stdout)")
            #expect(failure.stdout.contains("Masquerading:"), "the details still print: \(failure.stdout)")
            let brief = try await run([client, "status", "--brief"], environment: env)
            #expect(brief.status == 1 && brief.stdout == "Failure (the datapath is not attached yet)\n", "\(brief)")
            let briefJSON = try await run([client, "status", "--brief", "-o", "json"], environment: env)
            #expect(briefJSON.status == 1)
            #expect(try APIJSON.decoder().decode(HealthResponse.self, from: Data(briefJSON.stdout.utf8)).state == .failure)
            let statusJSON = try await run([client, "status", "-o", "json"], environment: env)
            #expect(statusJSON.status == 1, "-o json exits by health too")
            #expect(try APIJSON.decoder().decode(StatusResponse.self, from: Data(statusJSON.stdout.utf8)).ready == false)

            // A failed reconcile with the datapath attached: whatever state masqd reports, the
            // exit status agrees with an HTTP probe of /v1/healthz.
            api.status.update { $0.ready = true; $0.lastApplyError = "netlink: device busy" }
            let probe = try await api.get("/v1/healthz")
            let health = try api.decode(HealthResponse.self, probe)
            let warning = try await run([client, "status", "--brief"], environment: env)
            #expect(warning.status == (probe.status == 200 ? 0 : 1), "\(probe.text) \(warning)")
            #expect(warning.stdout.hasPrefix(health.state.rawValue + " (") && warning.stdout.contains("netlink: device busy"),
                    "\(warning.stdout)")
            #expect(warning.stdout.split(separator: "\n").count == 1)
            api.status.update { $0.lastApplyError = nil }

            // A rejected ip-masq-agent file while the agent is on: Warning, exit 0, the error said.
            api.status.update {
                $0.config = api.config
                $0.ipMasqAgent.lastError = "/etc/config/ip-masq-agent:1: fd00::/8 is an IPv6 CIDR, but enable-ipv6-masquerade is false"
            }
            let rejected = try await run([client, "status"], environment: env)
            #expect(rejected.status == 0, "\(rejected)")
            #expect(rejected.stdout.contains("\nHealth:         Warning (ip-masq-agent config rejected: /etc/config/ip-masq-agent:1: fd00::/8 is an IPv6 CIDR"),
                    "\(rejected.stdout)")
            api.status.update { $0.ipMasqAgent.lastError = nil }
        }
    }

    @Test("-o yaml prints the API's documents as block YAML with the same values, for every command")
    func yamlOutput() async throws {
        let client = try builtBinary("masq-client")
        // A group given by number: a string YAML would read as an int unless quoted.
        try await LiveAPI.with(socketGroup: "65534") { api in
            try await api.fillFlows(3)
            let env = ["MASQ_SOCKET": api.socketPath]
            func outputs(_ argv: [String]) async throws -> (json: Data, yaml: String) {
                let json = try await run([client] + argv + ["-o", "json"], environment: env)
                let yaml = try await run([client, "-o", "yaml"] + argv, environment: env)
                #expect(json.status == 0 && yaml.status == 0, "\(argv): \(json.stderr) \(yaml.stderr)")
                #expect(!yaml.stdout.hasPrefix("{") && !yaml.stdout.isEmpty, "\(argv): not block YAML: \(yaml.stdout)")
                return (Data(json.stdout.utf8), yaml.stdout)
            }
            let yamlDecoder = YAMLDecoder()
            let jsonDecoder = APIJSON.decoder()

            let ipmasq = try await outputs(["ipmasq", "list"])
            #expect(ipmasq.yaml == "cidrs:\n- 100.0.9.0/24\n- 192.168.0.0/16\n", "\(ipmasq.yaml)")

            let config = try await outputs(["config"])
            #expect(config.yaml.contains("\n  socketGroup: '65534'\n") && config.yaml.contains("\n  logLevel: info\n"), "\(config.yaml)")
            #expect(try yamlDecoder.decode(ConfigResponse.self, from: config.yaml) == jsonDecoder.decode(ConfigResponse.self, from: config.json))

            let explainArgs = ["explain", "--src", "10.244.1.2", "--dst", "192.0.2.10", "--device", "lo"]
            let explain = try await outputs(explainArgs)
            #expect(try yamlDecoder.decode(ExplainResponse.self, from: explain.yaml) == jsonDecoder.decode(ExplainResponse.self, from: explain.json))

            let status = try await outputs(["status"])
            var fromYAML = try yamlDecoder.decode(StatusResponse.self, from: status.yaml)
            let fromJSON = try jsonDecoder.decode(StatusResponse.self, from: status.json)
            fromYAML.uptimeSeconds = fromJSON.uptimeSeconds
            // Two fetches: a summary's age (and, if a GC pass ran between them, its time) moves.
            for index in fromYAML.tables.indices where index < fromJSON.tables.count {
                fromYAML.tables[index].ageSeconds = fromJSON.tables[index].ageSeconds
                fromYAML.tables[index].asOf = fromJSON.tables[index].asOf
            }
            #expect(fromYAML == fromJSON)
            #expect(status.yaml.contains("\nready: true\n") && status.yaml.contains("\nversion: \(masqVersion)\n"), "\(status.yaml)")

            let health = try await outputs(["status", "--brief"])
            #expect(health.yaml == "state: Ok\n", "\(health.yaml)")

            // conntrack list: NDJSON, and a YAML stream of one document a flow.
            let flows = try await outputs(["conntrack", "list"])
            let lines = String(decoding: flows.json, as: UTF8.self).split(separator: "\n")
            let documents = try Yams.load_all(yaml: flows.yaml).map { $0 }
            #expect(lines.count == 3 && documents.count == 3, "\(flows.yaml)")
            func stable(_ entry: ConntrackEntry) -> ConntrackEntry {
                var entry = entry
                entry.ageSeconds = 0
                entry.expiresInSeconds = 0
                return entry
            }
            let jsonEntries = try lines.map { stable(try jsonDecoder.decode(ConntrackEntry.self, from: Data($0.utf8))) }
            let yamlEntries = try flows.yaml.components(separatedBy: "---\n").filter { !$0.isEmpty }
                .map { stable(try yamlDecoder.decode(ConntrackEntry.self, from: $0)) }
            #expect(jsonEntries.count == yamlEntries.count && jsonEntries.allSatisfy(yamlEntries.contains), "\(flows.yaml)")

            // conntrack events: a YAML stream as it comes, one document an NDJSON line. The flush
            // below deletes the 3 flows, 3 events each stream waits for.
            let eventArgs = ["conntrack", "events", "--types", "deleted", "--limit", "3", "--timeout", "60"]
            async let jsonEvents = run([client] + eventArgs + ["-o", "json"], environment: env, timeout: .seconds(90))
            async let yamlEvents = run([client] + eventArgs + ["-o", "yaml"], environment: env, timeout: .seconds(90))
            // Both streams open before the flows go (bounded: 30 s).
            for _ in 0..<150 {
                if try await api.get("/metrics", accept: "text/plain").text.contains("\nmasq_event_subscribers 2\n") { break }
                try await Task.sleep(for: .milliseconds(200))
            }

            let flush = try await run([client, "conntrack", "flush", "--all", "-o", "yaml"], environment: env)
            #expect(flush.status == 0 && flush.stdout == "deleted: 3\n", "\(flush)")

            let (json, yaml) = try await (jsonEvents, yamlEvents)
            #expect(json.status == 0 && yaml.status == 0, "\(json) \(yaml)")
            #expect(yaml.stdout.hasPrefix("---\n") && yaml.stdout.contains("\ntype: deleted\n"), "\(yaml.stdout)")
            // Heartbeats come by each stream's own clock: the events are compared, their times to
            // the millisecond (YAML's timestamps and JSON's dates round differently).
            func events(_ documents: [FlowEvent]) -> [FlowEvent] {
                documents.filter { $0.type != .heartbeat }.map { event in
                    var event = event
                    event.time = event.time.map { Date(timeIntervalSince1970: ($0.timeIntervalSince1970 * 1000).rounded() / 1000) }
                    return event
                }
            }
            let eventsJSON = events(try json.stdout.split(separator: "\n").map { try jsonDecoder.decode(FlowEvent.self, from: Data($0.utf8)) })
            let eventsYAML = events(try yaml.stdout.components(separatedBy: "---\n").filter { !$0.isEmpty }
                .map { try yamlDecoder.decode(FlowEvent.self, from: $0) })
            #expect(eventsJSON.count == 3 && eventsJSON.allSatisfy { $0.type == .deleted && $0.time != nil } && eventsYAML == eventsJSON,
                    "\(yaml.stdout)")
        }
    }

    @Test("conntrack list: a narrow table under 100 columns, -o wide the full one, --no-headers the rows only")
    func tables() async throws {
        let client = try builtBinary("masq-client")
        try await LiveAPI.with { api in
            try await api.fillFlows(5)
            let env = ["MASQ_SOCKET": api.socketPath]
            let narrow = try await run([client, "conntrack", "list", "--proto", "tcp", "--dst", "100.0.0.0/24"], environment: env)
            #expect(narrow.status == 0, "\(narrow.stderr)")
            let rows = narrow.stdout.split(separator: "\n")
            #expect(rows.count == 6, "\(narrow.stdout)")
            #expect(rows.first?.split(separator: " ") == ["PROTO", "SOURCE", "DESTINATION", "SNAT", "STATE", "EXPIRES"])
            #expect(narrow.stderr == "5 flows\n")
            for row in rows { #expect(row.count <= 100, "\(row.count) columns: \(row)") }
            // Aligned: SNAT starts in the same column on every row, the translated source there.
            let header = String(rows[0])
            let snat = try #require(header.range(of: "SNAT")).lowerBound.utf16Offset(in: header)
            for row in rows.dropFirst() {
                let cells = row.split(separator: " ")
                #expect(cells.count == 6 && cells[0] == "tcp" && cells[1].hasPrefix("10.244.") && cells[2] == "100.0.0.2:8080", "\(row)")
                let start = row.index(row.startIndex, offsetBy: snat)
                #expect(row[start...].hasPrefix("100.0.0.1:"), "\(row)")
            }

            let wide = try await run([client, "conntrack", "list", "-o", "wide"], environment: env)
            let wideRows = wide.stdout.split(separator: "\n")
            #expect(wideRows.count == 6)
            #expect(wideRows.first?.split(separator: " ").joined(separator: " ") == "PROTO KIND ORIGINAL TRANSLATED STATE AGE EXPIRES PACKETS O/R DEVICE")
            #expect(wideRows.dropFirst().allSatisfy { $0.contains("masquerade") && $0.contains(" -> 100.0.0.2:8080") && $0.hasSuffix("lo") },
                    "\(wide.stdout)")

            let bare = try await run([client, "conntrack", "list", "--no-headers"], environment: env)
            #expect(bare.status == 0 && bare.stderr.isEmpty, "\(bare)")
            #expect(bare.stdout.split(separator: "\n") == Array(rows.dropFirst()), "\(bare.stdout)")
            let list = try await run([client, "ipmasq", "list", "--no-headers"], environment: env)
            #expect(list.stdout == "100.0.9.0/24\n192.168.0.0/16\n")
            let withHeader = try await run([client, "ipmasq", "list"], environment: env)
            #expect(withHeader.stdout == "IP PREFIX/ADDRESS\n100.0.9.0/24\n192.168.0.0/16\n")

            let json = try await run([client, "conntrack", "list", "-o", "json", "--limit", "2"], environment: env)
            let lines = json.stdout.split(separator: "\n")
            #expect(lines.count == 2)
            for line in lines { #expect((try? APIJSON.decoder().decode(ConntrackEntry.self, from: Data(line.utf8))) != nil, "\(line)") }

            let bad = try await run([client, "conntrack", "list", "--src", "10.0.0.1/8"], environment: env)
            #expect(bad.status == Self.usage && bad.stderr.contains("--src: '10.0.0.1/8' has host bits set"))
        }
    }

    @Test("conntrack list with IPv6 flows: the IPv6 rows under a header of their own, aligned for IPv6 endpoints; filters and flush by family and IPv6 CIDR")
    func ipv6Tables() async throws {
        let client = try builtBinary("masq-client")
        try await LiveAPI.with { api in
            try await api.fillFlows(3)
            try await api.fillFlows(4, family: .ipv6)
            let env = ["MASQ_SOCKET": api.socketPath]
            // Both families: the IPv4 part first, in its narrow columns, then the IPv6 part.
            let both = try await run([client, "conntrack", "list"], environment: env)
            #expect(both.status == 0 && both.stderr == "7 flows\n", "\(both)")
            let parts = both.stdout.components(separatedBy: "\n\n")
            #expect(parts.count == 2, "\(both.stdout)")
            for (part, family) in zip(parts, ["10.244.", "[fd00::af4:"]) {
                let rows = part.split(separator: "\n")
                let header = String(try #require(rows.first))
                #expect(header.split(separator: " ") == ["PROTO", "SOURCE", "DESTINATION", "SNAT", "STATE", "EXPIRES"])
                // Aligned: each column starts where its header does, on every row.
                let starts = ["SOURCE", "DESTINATION", "SNAT", "STATE"].map { header.range(of: $0)!.lowerBound.utf16Offset(in: header) }
                for row in rows.dropFirst() {
                    let cells = row.split(separator: " ")
                    #expect(cells.count == 6 && cells[1].hasPrefix(family), "\(row)")
                    for (start, cell) in zip(starts, cells[1...4]) {
                        #expect(String(row).dropFirst(start).hasPrefix(cell), "\(row): \(cell) not at column \(start)")
                    }
                }
            }
            #expect(parts[0].split(separator: "\n").allSatisfy { $0.count <= 100 }, "\(parts[0])")
            #expect(parts[1].contains("[fd00::6400:2]:8080  ") && parts[1].contains("[fd00::6400:1]:"), "\(parts[1])")

            let v6 = try await run([client, "conntrack", "list", "--family", "ipv6", "--src", "fd00::af4:0/112", "--no-headers"], environment: env)
            #expect(v6.status == 0 && v6.stdout.split(separator: "\n").count == 4, "\(v6)")
            let wide = try await run([client, "conntrack", "list", "-o", "wide", "--dst", "fd00::6400:2"], environment: env)
            #expect(wide.stdout.split(separator: "\n").count == 5 && wide.stdout.contains("[fd00::af4:1]:10000 -> [fd00::6400:2]:8080"), "\(wide.stdout)")

            let flush = try await run([client, "conntrack", "flush", "--family", "ipv6"], environment: env)
            #expect(flush.stdout == "Deleted 4 flows.\n", "\(flush)")
            let left = try await run([client, "conntrack", "list", "--no-headers"], environment: env)
            #expect(left.stdout.split(separator: "\n").count == 3 && !left.stdout.contains("fd00"), "\(left.stdout)")
        }
    }

    @Test("a reader that goes away (| head -1) ends the client at once and quietly, as SIGPIPE ends other tools, in every format")
    func closedPipe() async throws {
        let client = try builtBinary("masq-client")
        try await LiveAPI.with { api in
            // Far more than a pipe holds: the client is still writing when head has gone.
            try await api.fillFlows(3000)
            let env = ["MASQ_SOCKET": api.socketPath]
            for (format, first) in [("json", "{"), ("yaml", "---"), ("text", "PROTO"), ("wide", "PROTO")] {
                let piped = try await run(["/bin/bash", "-c", "set -o pipefail; \"$0\" conntrack list -o \(format) | head -1", client], environment: env)
                #expect(piped.stdout.split(separator: "\n").count == 1 && piped.stdout.hasPrefix(first), "\(format): \(piped.stdout.prefix(300))")
                // No "3000 flows" summary: the client did not read on to the end.
                #expect(piped.stderr.isEmpty, "\(format): \(piped.stderr.prefix(500))")
                #expect(piped.status == 128 + SIGPIPE, "\(format): exit status \(piped.status)")
            }
        }
    }

    @Test("conntrack flush needs a filter or --all, not both")
    func flush() async throws {
        let client = try builtBinary("masq-client")
        try await LiveAPI.with { api in
            try await api.fillFlows(5)
            let env = ["MASQ_SOCKET": api.socketPath]
            func flows() async throws -> Int {
                try await run([client, "conntrack", "list", "--no-headers"], environment: env).stdout.split(separator: "\n").count
            }
            let refused = try await run([client, "conntrack", "flush"], environment: env)
            #expect(refused.status == Self.usage && refused.stderr.contains("--all"), "\(refused)")
            let both = try await run([client, "conntrack", "flush", "--all", "--proto", "tcp"], environment: env)
            #expect(both.status == Self.usage, "\(both)")
            #expect(try await flows() == 5, "a refused flush deleted flows")

            let filtered = try await run([client, "conntrack", "flush", "--sport", "10000", "--src", "10.244.0.1"], environment: env)
            #expect(filtered.stdout == "Deleted 1 flow.\n", "\(filtered)")
            let all = try await run([client, "conntrack", "flush", "--all"], environment: env)
            #expect(all.stdout == "Deleted 4 flows.\n", "\(all)")
            #expect(try await flows() == 0)
        }
    }

    @Test("config prints YAML masqd reads back as its config file, durations as people write them")
    func config() async throws {
        let client = try builtBinary("masq-client")
        try await LiveAPI.with { api in
            let result = try await run([client, "config", "--socket", api.socketPath])
            #expect(result.status == 0, "\(result.stderr)")
            let text = result.stdout
            #expect(text.contains("\nconntrack-tcp-established-timeout: 6h\n") && text.contains("\nconntrack-gc-interval: 1m\n"), "\(text)")
            #expect(text.contains("\npod-cidrs: [10.244.1.0/24]\n") && text.contains("\n# socket-group: (not set)\n"), "\(text)")
            #expect(!text.contains(".0s"), "\(text)")
            #expect(text.contains("\n# ip-masq-agent: enabled, "), "\(text)")
            let parsed = try #require(try Yams.load(yaml: text) as? [String: Any])
            #expect(parsed["nat-max-entries"] as? Int == 262144 && parsed["enable-ipv4-masquerade"] as? Bool == true)

            // Every config key once, set or commented out.
            for key in ConfigKey.allCases {
                let lines = text.split(separator: "\n").filter { $0.hasPrefix(key.rawValue + ": ") || $0.hasPrefix("# \(key.rawValue): ") }
                #expect(lines.count == 1, "\(key.rawValue): \(lines)")
            }
            // masqd reads the text as a config file and gets the same config: the API answers
            // the same for it.
            let reread = try DaemonConfig(file: ConfigFile.parse(text, path: "masq-client config"), flags: [:])
            let served = try api.decode(ConfigResponse.self, await api.get("/v1/config"))
            let handlers = APIHandlers(datapath: api.datapath, status: DaemonStatus(), config: reread, lifetimes: .default)
            #expect(handlers.configResponse().daemon == served.daemon)
        }
    }

    @Test("status: every label has a value on its own line (no empty headers)")
    func statusText() async throws {
        let client = try builtBinary("masq-client")
        try await LiveAPI.with { api in
            let text = try await run([client, "status", "--socket", api.socketPath])
            #expect(text.status == 0, "\(text.stderr)")
            #expect(text.stdout.contains("Masquerading:   BPF (ip-masq-agent)   [lo]   10.244.1.0/24   [IPv4: Enabled, IPv6: Enabled]\n"), "\(text.stdout)")
            #expect(text.stdout.contains("\nSaturation:     no tuple needed more than its original port\n"), "\(text.stdout)")
            #expect(emptyLabels(text.stdout).isEmpty, "\(text.stdout)")
            let explain = try await run([client, "explain", "--src", "10.244.1.2", "--dst", "192.0.2.10", "--device", "lo", "--socket", api.socketPath])
            #expect(explain.stdout.contains("Rule:           cluster-node"), "\(explain.stdout)")
            let completion = try await run([client, "--generate-completion-script", "bash"])
            #expect(completion.stdout.contains("conntrack") && completion.stdout.contains("--no-headers"))
        }
    }

    @Test("each masq-client line of the README runs and succeeds")
    func readmeExamples() async throws {
        let client = try builtBinary("masq-client")
        let text = try String(contentsOfFile: SystemdTests.readme, encoding: .utf8)
        guard let start = text.range(of: "<!-- client-examples:begin"), let end = text.range(of: "<!-- client-examples:end -->") else {
            throw TestFailure("README has no client-examples block")
        }
        let lines = text[start.upperBound..<end.lowerBound].split(separator: "\n").map(String.init)
            .filter { $0.hasPrefix("masq-client ") }
        #expect(lines.count >= 8)
        try await LiveAPI.with { api in
            try await api.fillFlows(20)
            for line in lines {
                let argv = ReadmeTests.words(line.replacingOccurrences(of: "/run/masq/masqd.sock", with: api.socketPath)).dropFirst()
                let result = try await run([client] + argv, environment: ["MASQ_SOCKET": api.socketPath])
                #expect(result.status == 0, "\(line): \(result)")
            }
        }
    }
}
}

/// The lines of a status text whose label has no value after it ("Saturation:" alone).
func emptyLabels(_ text: String) -> [Substring] {
    text.split(separator: "\n").filter { line in
        !line.hasPrefix(" ") && line.hasSuffix(":") && !line.dropLast().contains(":")
    }
}

/// A Unix socket that is not masqd, at a fresh path: each connection goes to `serve` in turn, on a
/// thread of its own, and is closed when it returns.
final class FakeSocket: @unchecked Sendable {
    let path: String
    private let dir: String
    private let fd: Int32
    private let finished = DispatchSemaphore(value: 0)

    init(serve: @escaping @Sendable (Int32) -> Void) throws {
        dir = NSTemporaryDirectory() + "masq-client-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        path = dir + "/masqd.sock"
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
        }
        guard bound, listen(fd, 16) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            try? FileManager.default.removeItem(atPath: dir)
            throw TestFailure("listen on \(path): \(reason)")
        }
        let (listener, finished) = (fd, finished)
        Thread {
            while true {
                let connection = accept(listener, nil, nil)
                if connection < 0 { break }
                serve(connection)
                close(connection)
            }
            finished.signal()
        }.start()
    }

    /// Ends the accept loop (shutdown wakes a blocked accept) and removes the socket.
    func stop() {
        shutdown(fd, Int32(SHUT_RDWR))
        finished.wait()
        close(fd)
        try? FileManager.default.removeItem(atPath: dir)
    }

    static func send(_ connection: Int32, _ text: String) {
        _ = Array(text.utf8).withUnsafeBytes { Glibc.send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Reads up to the end of the request's head (a GET has no body) and returns it.
    @discardableResult
    static func readRequest(_ connection: Int32) -> String {
        var request: [UInt8] = []
        var byte: UInt8 = 0
        while !request.suffix(4).elementsEqual("\r\n\r\n".utf8), recv(connection, &byte, 1, 0) == 1 { request.append(byte) }
        return String(decoding: request, as: UTF8.self)
    }

    /// Reads until the client closes (bounded: 60 s), answering nothing.
    static func drain(_ connection: Int32) {
        var timeout = timeval(tv_sec: 60, tv_usec: 0)
        setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 4096)
        while recv(connection, &buffer, buffer.count, 0) > 0 {}
    }
}
