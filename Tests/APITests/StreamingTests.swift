@preconcurrency import Glibc
import API
import CLibbpf
import CMasq
import Foundation
import Testing

@testable import Daemon

/// The real masqd streaming a large NAT table: time, and the daemon's peak memory. The table is
/// filled directly (BPF_MAP_UPDATE_ELEM on the pinned map), 120,000 flows = 240,000 entries.
@Suite("streaming a large conntrack dump", .serialized, .enabled(if: isRoot, "needs root: network namespaces, bpffs"))
struct StreamingTests {
    static let flows = 120_000

    @Test("120k flows stream as NDJSON in bounded daemon memory")
    func largeDump() async throws {
        let masqd = try builtBinary("masqd")
        let client = try builtBinary("masq-client")
        try await DaemonSandbox.with { sandbox in
            let process = try sandbox.start([masqd, "run"] + sandbox.masqdFlags(["--log-level", "info"]))
            try await sandbox.waitHealthy()
            let pid = daemonPID(process)

            let fd = bpf_obj_get(sandbox.bpffs + "/" + MASQ_MAP_NAT_V4)
            #expect(fd >= 0)
            defer { close(fd) }
            let nat = BPFMap(name: MASQ_MAP_NAT_V4, fd: fd, maxEntries: 0)
            let fillStart = ContinuousClock.now
            try LiveAPI.fill(nat, count: Self.flows)
            let fillTime = ContinuousClock.now - fillStart
            let entries = try nat.countEntries(key: masq_nat_key_v4.self, value: masq_nat_entry_v4.self)
            #expect(entries == 2 * Self.flows, "the LRU map kept \(entries) of \(2 * Self.flows) entries")

            let before = memory(of: pid)
            // curl: the raw stream; masq-client: the stream decoded and printed as a table.
            let start = ContinuousClock.now
            let curl = try await run(["/usr/bin/env", "curl", "-sS", "--unix-socket", sandbox.socketPath,
                                      "-H", "Accept: application/x-ndjson", "-o", sandbox.dir + "/dump.ndjson",
                                      "-w", "%{size_download}", "http://masqd/v1/conntrack"], timeout: .seconds(120))
            let curlTime = ContinuousClock.now - start
            #expect(curl.status == 0, "\(curl.stderr)")
            let lines = try String(contentsOfFile: sandbox.dir + "/dump.ndjson", encoding: .utf8).split(separator: "\n").count
            #expect(lines == Self.flows)
            let afterCurl = memory(of: pid)

            let clientStart = ContinuousClock.now
            let table = try await run([client, "conntrack", "list", "--socket", sandbox.socketPath], timeout: .seconds(180))
            let clientTime = ContinuousClock.now - clientStart
            #expect(table.status == 0, "\(table.stderr)")
            #expect(table.stdout.split(separator: "\n").count == Self.flows + 1)

            let page = try await TestHTTP.request(socketPath: sandbox.socketPath, method: .GET, uri: "/v1/conntrack?limit=10000")
            #expect(page.status == 200)
            let after = memory(of: pid)

            let report = """
                streaming \(Self.flows) flows (\(entries) map entries): fill \(fillTime); \
                curl NDJSON \(curlTime) (\(curl.stdout) bytes); masq-client table \(clientTime); \
                masqd VmHWM before \(before.peak) KiB, after curl \(afterCurl.peak) KiB, after all \(after.peak) KiB \
                (RSS now \(after.current) KiB)
                """
            print(report)
            try? report.write(toFile: "/tmp/masq-streaming-measurement.txt", atomically: true, encoding: .utf8)
            // Bounded: streaming 120k flows must not grow the daemon by the size of the dump.
            let dumpKiB = (Int(curl.stdout) ?? 0) / 1024
            #expect(afterCurl.peak - before.peak < max(dumpKiB / 4, 16_384), report)
        }
    }
}
