@preconcurrency import Glibc
import API
import Foundation
import NIOHTTP1
import TestSupport
import Testing
import Yams

@testable import ControlServer
@testable import Daemon

/// `prometheus-serve-addr` as a config value.
@Suite("prometheus-serve-addr")
struct ServeAddressTests {
    @Test("Go's listen addresses parse; anything else is refused naming the key", arguments: [
        (":9962", "", 9962), ("127.0.0.1:9962", "127.0.0.1", 9962), ("[::1]:9090", "::1", 9090), ("localhost:1", "localhost", 1),
        ("[fd00:0::1]:80", "fd00::1", 80),
    ])
    func parses(text: String, host: String, port: Int) throws {
        let config = try DaemonConfig(file: [:], flags: [.podCIDRs: .scalar("10.0.0.0/8"), .prometheusServeAddr: .scalar(text)])
        #expect(config.prometheusServeAddr == ServeAddress(host: host, port: port))
        #expect(config.prometheusServeAddr?.description == (text.hasPrefix(":") ? ":\(port)" : text.replacingOccurrences(of: ":0:", with: ":")))
    }

    @Test("empty is off; a bad address is an error: no names to look up, so what is accepted binds", arguments: [
        "9962", ":0", ":70000", "::1:80", "[::1:80", "a b:1", "abc:80", "999.1.1.1:80", "10.1:80", "example.com:9962",
        "[127.0.0.1]:80", "[]:80", "[fe80::1%eth0]:80",
    ])
    func refuses(text: String) throws {
        #expect(try DaemonConfig(file: [:], flags: [.podCIDRs: .scalar("10.0.0.0/8"), .prometheusServeAddr: .scalar("")])
            .prometheusServeAddr == nil)
        #expect(throws: ConfigErrors.self) {
            try DaemonConfig(file: [:], flags: [.podCIDRs: .scalar("10.0.0.0/8"), .prometheusServeAddr: .scalar(text)])
        }
    }

    @Test("the ip-masq-agent safety re-read of an unchanged file, good or bad, counts no reload")
    func unchangedFileIsNoReload() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("masq-reload-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/config"
        let status = DaemonStatus()
        let (_, sink) = AsyncStream.makeStream(of: ReconcileInputs.Change.self)
        let watcher = IPMasqAgentWatcher(path: file, enabledAtStart: true, status: status, changes: sink,
                                         logger: .init(label: "apitests"))
        try "nonMasqueradeCIDRs: [10.0.0.0/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let list = watcher.load(current: nil, ipv6Enabled: true)
        #expect(list != nil)
        for _ in 0..<3 { #expect(watcher.load(current: list, ipv6Enabled: true) == nil) }
        #expect(status.snapshot.configReloads.ipMasqAgent.ok == 1)
        try "nonMasqueradeCIDRs: [10.1.1.1/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        for _ in 0..<3 { #expect(watcher.load(current: list, ipv6Enabled: true) == nil) }
        #expect(status.snapshot.configReloads.ipMasqAgent.error == 1)
        try "nonMasqueradeCIDRs: [10.0.0.0/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(watcher.load(current: list, ipv6Enabled: true) == nil)
        try "nonMasqueradeCIDRs: [10.0.0.0/8, 192.168.0.0/16]\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(watcher.load(current: list, ipv6Enabled: true) != nil)
        let reloads = status.snapshot.configReloads.ipMasqAgent
        #expect(reloads.ok == 3 && reloads.error == 1, "\(reloads)")
    }
}

extension LiveAPITests {
@Suite("metrics listener and exposition", .serialized)
struct MetricsLiveTests {
    @Test("the TCP listener serves /metrics and /healthz read only, and nothing else")
    func listener() async throws {
        try await LiveAPI.with(metrics: ServeAddress(host: "127.0.0.1", port: 0)) { api in
            let address = try #require(api.metricsAddress)
            let port = try #require(Int(address.split(separator: ":").last ?? ""))
            func get(_ uri: String, _ method: HTTPMethod = .GET) async throws -> HTTPResult {
                try await TestHTTP.request(host: "127.0.0.1", port: port, method: method, uri: uri)
            }
            let metrics = try await get("/metrics")
            #expect(metrics.status == 200 && metrics.headers.first(name: "content-type") == MediaType.prometheus)
            #expect(metrics.text.contains("\nmasq_up 1\n"))
            let health = try await get("/healthz")
            #expect(health.status == 200 && health.text.contains(#""state":"Ok""#))
            api.status.update { $0.applied?.devices = [] }
            let failing = try await get("/healthz")
            #expect(failing.status == 503 && failing.text.contains("no masquerading device in force"))

            for path in ["/v1/status", "/v1/healthz", "/v1/conntrack", "/v1/config", "/v1/explain", "/", "/metrics/x"] {
                let answer = try await get(path)
                #expect(answer.status == 404 && answer.text.contains("this listener serves /metrics and /healthz only"), "\(path): \(answer.text)")
            }
            #expect(try await get("/metrics", .HEAD).status == 200)
            for method in [HTTPMethod.POST, .DELETE, .PUT] {
                let refused = try await get("/metrics", method)
                #expect(refused.status == 405 && refused.headers.first(name: "allow") == "GET, HEAD")
                #expect(try await get("/v1/conntrack", method).status == 404)
            }
        }
    }

    @Test("/metrics has bounded labels only, process_* figures, and promtool check metrics finds nothing")
    func promtoolClean() async throws {
        try await LiveAPI.with { api in
            _ = try await FigureLiveTests.fill(api)
            let text = try await api.get("/metrics", accept: "text/plain").text
            let lines = text.split(separator: "\n")
            let start = try #require(lines.first { $0.hasPrefix("process_start_time_seconds ") }.flatMap { Double($0.split(separator: " ")[1]) })
            #expect(abs(start - Date().timeIntervalSince1970) < 3600, "process_start_time_seconds \(start)")
            for name in ["process_resident_memory_bytes", "process_open_fds", "process_max_fds", "process_cpu_seconds_total"] {
                #expect(lines.contains { $0.hasPrefix(name + " ") }, "no \(name)")
            }
            // Only labels whose values come from fixed sets.
            let allowed: Set<String> = ["family", "proto", "kind", "map", "reason", "le", "source", "result", "version"]
            for line in lines where !line.hasPrefix("#") {
                guard let open = line.firstIndex(of: "{"), let close = line.firstIndex(of: "}") else { continue }
                let names = line[line.index(after: open)..<close].split(separator: ",").map { String($0.split(separator: "=")[0]) }
                #expect(Set(names).isSubset(of: allowed), "\(line)")
            }
            let promtool = try #require(Command.which("promtool"), "promtool not installed (scripts/prereqs.sh installs Debian's prometheus)")
            let file = api.dir + "/metrics.txt"
            try text.write(toFile: file, atomically: true, encoding: .utf8)
            let check = try await run(["/bin/sh", "-c", "\(promtool) check metrics < \(file)"])
            #expect(check.status == 0 && check.stdout.isEmpty && check.stderr.isEmpty, "\(check.stdout)\(check.stderr)")
        }
    }

    @Test("masq_config_last_reload_successful says per source whether the last load was rejected (0) or not (1), for as long as it stays so")
    func lastReloadSuccessful() async throws {
        try await LiveAPI.with { api in
            // The gauge's value per source.
            func gauge() async throws -> [String: String] {
                let text = try await api.get("/metrics", accept: "text/plain").text
                #expect(text.contains("# TYPE masq_config_last_reload_successful gauge\n"))
                var values: [String: String] = [:]
                for line in text.split(separator: "\n") {
                    if let match = line.wholeMatch(of: /masq_config_last_reload_successful\{source="([a-z-]+)"\} (\S+)/) {
                        values[String(match.output.1)] = String(match.output.2)
                    }
                }
                return values
            }
            #expect(try await gauge() == ["ip-masq-agent": "1", "daemon": "1"])

            let file = api.dir + "/ip-masq-agent"
            let (_, sink) = AsyncStream.makeStream(of: ReconcileInputs.Change.self)
            let watcher = IPMasqAgentWatcher(path: file, enabledAtStart: true, status: api.status, changes: sink,
                                             logger: .init(label: "apitests"))
            try "nonMasqueradeCIDRs: [11.0.0.0/8, fd00::/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
            #expect(watcher.load(current: nil, ipv6Enabled: false) == nil)
            #expect(try await gauge() == ["ip-masq-agent": "0", "daemon": "1"])
            // The unchanged file read again counts no reload, and the gauge stays 0.
            #expect(watcher.load(current: nil, ipv6Enabled: false) == nil)
            #expect(try await gauge() == ["ip-masq-agent": "0", "daemon": "1"])
            try "nonMasqueradeCIDRs: [11.0.0.0/8]\n".write(toFile: file, atomically: true, encoding: .utf8)
            #expect(watcher.load(current: nil, ipv6Enabled: false) != nil)
            #expect(try await gauge() == ["ip-masq-agent": "1", "daemon": "1"])

            api.status.update { $0.configReloads.record(.daemon, error: "/etc/masq/config.yaml: bad") }
            #expect(try await gauge() == ["ip-masq-agent": "1", "daemon": "0"])
            api.status.update { $0.configReloads.record(.daemon, error: nil) }
            #expect(try await gauge() == ["ip-masq-agent": "1", "daemon": "1"])
        }
    }

    @Test("every masqd metric deploy/prometheus/masq-rules.yaml alerts on is one /metrics exports")
    func alertingRulesUseExportedMetrics() async throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("deploy/prometheus/masq-rules.yaml").path
        let rules = try String(contentsOfFile: path, encoding: .utf8)
        // The metric names in the expressions (label values, in quotes, name maps, not metrics).
        var used = Set<String>()
        for line in rules.split(separator: "\n") where line.trimmingCharacters(in: .whitespaces).hasPrefix("expr:") {
            let unquoted = line.split(separator: "\"", omittingEmptySubsequences: false).enumerated()
                .filter { $0.offset % 2 == 0 }.map(\.element).joined(separator: " ")
            for match in unquoted.matches(of: /masq_[a-z0-9_]+/) { used.insert(String(match.output)) }
        }
        #expect(used.count >= 8, "\(used.sorted())")
        try await LiveAPI.with { api in
            let text = try await api.get("/metrics", accept: "text/plain").text
            for name in used.sorted() {
                #expect(text.contains("# TYPE \(name) "), "the rules use \(name), which /metrics does not export")
            }
        }
    }

    @Test("masq-rules.test.yaml feeds each masqd series with the labels /metrics gives it (family on the per-family counters)")
    func alertingRuleTestsUseExportedLabels() async throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("deploy/prometheus/masq-rules.test.yaml").path
        let tests = try #require(try Yams.load(yaml: String(contentsOfFile: path, encoding: .utf8)) as? [String: Any])
        let series = ((tests["tests"] as? [[String: Any]]) ?? [])
            .flatMap { ($0["input_series"] as? [[String: Any]]) ?? [] }
            .compactMap { $0["series"] as? String }
        #expect(series.count >= 10, "\(series)")
        // A series selector or exposition line up to its value: name and labels.
        func sample(_ text: Substring) -> (name: String, labels: [String: String])? {
            guard let match = text.firstMatch(of: /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?/) else { return nil }
            var labels: [String: String] = [:]
            for pair in (match.output.2 ?? "").matches(of: /([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"]*)"/) {
                labels[String(pair.output.1)] = String(pair.output.2)
            }
            return (String(match.output.1), labels)
        }
        try await LiveAPI.with { api in
            let exported = try await api.get("/metrics", accept: "text/plain").text.split(separator: "\n")
                .filter { !$0.hasPrefix("#") }.compactMap { sample($0) }
            var checked = 0
            for text in series {
                guard let (name, labels) = sample(text[...]), name.hasPrefix("masq_") else { continue }
                // job and instance are the scrape's labels, not masqd's.
                let own = labels.filter { $0.key != "job" && $0.key != "instance" }
                #expect(exported.contains { $0.name == name && $0.labels == own },
                        "the test feeds \(name)\(own), which /metrics has not; it has \(exported.filter { $0.name == name }.map(\.labels))")
                checked += 1
            }
            #expect(checked >= 10)
        }
    }
}

@Suite("metrics listener of a real masqd", .serialized)
struct MetricsProcessTests {
    @Test("masqd --prometheus-serve-addr serves /metrics and /healthz over TCP in its namespace")
    func realListener() async throws {
        let masqd = try builtBinary("masqd")
        let curl = try #require(Command.which("curl"))
        try await DaemonSandbox.with { sandbox in
            try await sandbox.addDevice()
            _ = try sandbox.start([masqd, "run"] + sandbox.masqdFlags(["--prometheus-serve-addr", "127.0.0.1:9962"]))
            try await sandbox.waitHealthy()
            let inside = ["/usr/bin/nsenter", "--net=/run/netns/\(sandbox.name)", curl, "-s", "-o", "/dev/null", "-w", "%{http_code}"]
            #expect(try await run(inside + ["http://127.0.0.1:9962/healthz"]).stdout == "200")
            #expect(try await run(inside + ["http://127.0.0.1:9962/metrics"]).stdout == "200")
            #expect(try await run(inside + ["http://127.0.0.1:9962/v1/status"]).stdout == "404")
            #expect(try await run(inside + ["-X", "DELETE", "http://127.0.0.1:9962/v1/conntrack"]).stdout == "404")
            let config = try await TestHTTP.request(socketPath: sandbox.socketPath, method: .GET, uri: "/v1/config")
            #expect(config.text.contains(#""prometheusServeAddr":"127.0.0.1:9962""#), "\(config.text)")
            #expect(sandbox.log.contains("Metrics listener serving /metrics and /healthz"))
        }
    }
}
}
