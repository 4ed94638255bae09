@preconcurrency import Glibc
import API
import CLibbpf
import CMasq
import Foundation
import Testing

@testable import Datapath

extension LiveAPITests {
/// The control API of a real masqd over a large NAT table (benchmarks/control-api.sh runs it; it
/// runs only when MASQ_BENCH_FLOWS is set, never in CI). The table is filled as GCScaleTests
/// fills it, with every flow established; then, once a GC pass has read the filled table:
/// /v1/status and /metrics latency alone and under concurrent clients, an NDJSON dump of every
/// flow with masqd's peak RSS, and masq-client's conntrack list of every flow. Prints the
/// figures and writes them to /tmp/masq-control-api-benchmark.txt. It measures; it asserts only
/// that the answers are whole.
@Suite("control API benchmark", .serialized,
       .enabled(if: ProcessInfo.processInfo.environment["MASQ_BENCH_FLOWS"] != nil))
struct ControlAPIBenchmark {
    static let environment = ProcessInfo.processInfo.environment

    @Test("status, /metrics and the NDJSON dump over a large table")
    func measure() async throws {
        let flows = Int(Self.environment["MASQ_BENCH_FLOWS"] ?? "") ?? 500_000
        let clients = Int(Self.environment["MASQ_BENCH_CLIENTS"] ?? "") ?? 50
        let rounds = Int(Self.environment["MASQ_BENCH_ROUNDS"] ?? "") ?? 4
        // ipv6: the flows go to masq_nat_v6 (LiveAPI's IPv6 twins, written one entry at a time).
        let family = NATFamily(rawValue: Self.environment["MASQ_BENCH_FAMILY"] ?? "") ?? .ipv4
        let masqd = try Self.environment["MASQD_BIN"] ?? builtBinary("masqd")
        var capacity = 1024
        while capacity < 2 * flows { capacity *= 2 }
        try await DaemonSandbox.with { sandbox in
            try await sandbox.addDevice()
            let process = try sandbox.start([masqd, "run"] + sandbox.masqdFlags([
                "--log-level", "info", "--nat-max-entries", String(capacity),
            ]))
            try await sandbox.waitHealthy()
            let pid = daemonPID(process)
            var lines = ["masqd \(masqd), \(flows) \(family) flows (\(2 * flows) entries, nat-max-entries \(capacity)), "
                         + "\(clients) concurrent clients x \(rounds) requests; VmHWM at start \(memory(of: pid).peak) KiB"]

            let name = family == .ipv6 ? MASQ_MAP_NAT_V6 : MASQ_MAP_NAT_V4
            let fd = bpf_obj_get(sandbox.bpffs + "/" + name)
            #expect(fd >= 0)
            defer { close(fd) }
            if family == .ipv6 {
                try LiveAPI.fill(BPFMap(name: name, fd: fd, maxEntries: 0), count: flows, family: .ipv6)
            } else {
                try GCScaleTests.fill(BPFMap(name: name, fd: fd, maxEntries: 0), flows: flows, closedEvery: nil)
            }
            let filled = Date()
            // A GC pass that started after the fill: the figures status serves come from one.
            let deadline = ContinuousClock.now + .seconds(300)
            while ContinuousClock.now < deadline {
                try await Task.sleep(for: .seconds(2))
                // A status that takes longer than the client waits (before issue 12) counts as no answer.
                guard let gc = try? await GCScaleTests.gc(sandbox) else { continue }
                if let seconds = gc.lastPassSeconds, let end = gc.lastPassAt, end.addingTimeInterval(-seconds) > filled {
                    lines.append("GC pass over the filled table: \(String(format: "%.2f", seconds)) s")
                    break
                }
            }

            for uri in ["/v1/status", "/metrics"] {
                let alone = await Self.latencies(sandbox, uri, clients: 1, rounds: 20)
                let loaded = await Self.latencies(sandbox, uri, clients: clients, rounds: rounds)
                lines.append("\(uri): alone p50 \(Self.ms(alone.seconds, 0.5)) p99 \(Self.ms(alone.seconds, 0.99))"
                             + " (\(alone.failed) failed); \(clients) clients p50 \(Self.ms(loaded.seconds, 0.5))"
                             + " p99 \(Self.ms(loaded.seconds, 0.99)) (\(loaded.failed) failed)")
                // The same from a light client process (benchmarks/httpload.py): the clients above
                // are this debug test process, which shares the two CPUs with masqd.
                for (n, r) in [(1, 20), (clients, rounds)] {
                    let load = try await run(["/usr/bin/env", "python3", Self.httpload, "--socket", sandbox.socketPath,
                                              "--uri", uri, "--clients", String(n), "--rounds", String(r)],
                                             timeout: .seconds(600))
                    #expect(load.status == 0, "\(load.stderr)")
                    lines.append("\(uri): \(n) httpload.py client(s) x \(r): "
                                 + load.stdout.trimmingCharacters(in: .whitespacesAndNewlines) + " (ms)")
                }
            }

            let before = memory(of: pid)
            let start = ContinuousClock.now
            let curl = try await run(["/usr/bin/env", "curl", "-sS", "--unix-socket", sandbox.socketPath,
                                      "-H", "Accept: application/x-ndjson", "-o", "/dev/null",
                                      "-w", "%{size_download}", "http://masqd/v1/conntrack"], timeout: .seconds(600))
            let took = ContinuousClock.now - start
            #expect(curl.status == 0, "\(curl.stderr)")
            let after = memory(of: pid)
            lines.append("NDJSON dump of every flow: \(took) (\(curl.stdout) bytes); masqd VmHWM before \(before.peak) KiB, "
                         + "after \(after.peak) KiB (RSS now \(after.current) KiB)")
            // What a user types: the table and the JSON document of every flow (to /dev/null).
            let client = try Self.environment["MASQ_CLIENT_BIN"] ?? builtBinary("masq-client")
            for args in [["conntrack", "list"], ["conntrack", "list", "-o", "json"]] {
                let start = ContinuousClock.now
                let listed = try await run(["/bin/sh", "-c", #"exec "$0" "$@" >/dev/null"#, client] + args
                                           + ["--socket", sandbox.socketPath], timeout: .seconds(600))
                #expect(listed.status == 0, "\(listed.stderr)")
                lines.append("masq-client \(args.joined(separator: " ")) (\(client)): \(ContinuousClock.now - start)")
            }
            let report = lines.joined(separator: "\n")
            print(report)
            try? report.write(toFile: "/tmp/masq-control-api-benchmark.txt", atomically: true, encoding: .utf8)
        }
    }

    /// Each of `clients` sends `rounds` requests for `uri` one after another: the latency of each
    /// answer, in seconds, and how many got none (masqd closes a connection idle for 30 s).
    static func latencies(_ sandbox: DaemonSandbox, _ uri: String, clients: Int, rounds: Int) async -> (seconds: [Double], failed: Int) {
        await withTaskGroup(of: (seconds: [Double], failed: Int).self) { group in
            for _ in 0..<clients {
                group.addTask {
                    var result: (seconds: [Double], failed: Int) = ([], 0)
                    for _ in 0..<rounds {
                        let start = ContinuousClock.now
                        guard let r = try? await TestHTTP.request(socketPath: sandbox.socketPath, method: .GET, uri: uri,
                                                                  timeout: .seconds(300)), r.status == 200 else {
                            result.failed += 1
                            continue
                        }
                        let took = ContinuousClock.now - start
                        result.seconds.append(Double(took.components.seconds) + Double(took.components.attoseconds) / 1e18)
                    }
                    return result
                }
            }
            return await group.reduce(into: ([], 0)) { $0.seconds += $1.seconds; $0.failed += $1.failed }
        }
    }

    /// benchmarks/httpload.py, found from this file's place in the repository.
    static let httpload = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("benchmarks/httpload.py").path

    /// The `q` quantile (nearest rank) in milliseconds.
    static func ms(_ values: [Double], _ q: Double) -> String {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return "-" }
        let rank = min(sorted.count - 1, max(0, Int((q * Double(sorted.count)).rounded(.up)) - 1))
        return String(format: "%.1f ms", sorted[rank] * 1000)
    }
}
}
