@preconcurrency import Glibc
import API
import CLibbpf
import CMasq
@testable import Datapath
import Foundation

import Testing

extension LiveAPITests {
/// The real masqd streaming a large NAT table: time, and the daemon's peak memory. The table is
/// filled directly (BPF_MAP_UPDATE_ELEM on the pinned map): 150,000 flows, 300,000 entries
/// written (every flow whose EGRESS entry is there is listed).
@Suite("streaming a large conntrack dump", .serialized)
struct StreamingTests {
    static let flows = 150_000

    @Test("100k+ flows stream as NDJSON in bounded daemon memory")
    func largeDump() async throws {
        let masqd = try builtBinary("masqd")
        let client = try builtBinary("masq-client")
        try await DaemonSandbox.with { sandbox in
            try await sandbox.addDevice()
            // The filled flows are SYN-only: a long syn timeout keeps the GC from expiring them
            // while a loaded machine is still reading the dump.
            let process = try sandbox.start([masqd, "run"] + sandbox.masqdFlags(["--log-level", "info", "--nat-max-entries", "1048576",
                                                                                 "--conntrack-tcp-syn-timeout", "1h"]))
            try await sandbox.waitHealthy()
            let pid = daemonPID(process)

            let fd = bpf_obj_get(sandbox.bpffs + "/" + MASQ_MAP_NAT_V4)
            #expect(fd >= 0)
            defer { close(fd) }
            let nat = BPFMap(name: MASQ_MAP_NAT_V4, fd: fd, maxEntries: 0)
            let fillStart = ContinuousClock.now
            try LiveAPI.fill(nat, count: Self.flows)
            let fillTime = ContinuousClock.now - fillStart
            var entries = 0, egress = 0
            var token: UInt32? = nil
            repeat {
                let batch = try nat.lookupBatch(from: token, count: 4096, key: masq_nat_key_v4.self, value: masq_nat_entry_v4.self)
                entries += batch.entries.count
                egress += batch.entries.filter { $0.key.dir == UInt8(MASQ_DIR_EGRESS) }.count
                token = batch.next
            } while token != nil
            #expect(egress >= 100_000, "the map kept \(egress) flows of \(Self.flows)")

            let before = memory(of: pid)
            // curl: the raw stream; masq-client: the stream decoded and printed as a table.
            let start = ContinuousClock.now
            let curl = try await run(["/usr/bin/env", "curl", "-sS", "--unix-socket", sandbox.socketPath,
                                      "-H", "Accept: application/x-ndjson", "-o", sandbox.dir + "/dump.ndjson",
                                      "-w", "%{size_download}", "http://masqd/v1/conntrack"], timeout: .seconds(120))
            let curlTime = ContinuousClock.now - start
            #expect(curl.status == 0, "\(curl.stderr)")
            let lines = try String(contentsOfFile: sandbox.dir + "/dump.ndjson", encoding: .utf8).split(separator: "\n").count
            #expect(lines == egress)
            let afterCurl = memory(of: pid)

            let clientStart = ContinuousClock.now
            let table = try await run([client, "conntrack", "list", "--socket", sandbox.socketPath], timeout: .seconds(180))
            let clientTime = ContinuousClock.now - clientStart
            #expect(table.status == 0, "\(table.stderr)")
            #expect(table.stdout.split(separator: "\n").count == egress + 1)

            let page = try await TestHTTP.request(socketPath: sandbox.socketPath, method: .GET, uri: "/v1/conntrack?limit=10000")
            #expect(page.status == 200)
            let after = memory(of: pid)

            let report = """
                streaming \(egress) flows (\(entries) map entries): fill \(fillTime); \
                curl NDJSON \(curlTime) (\(curl.stdout) bytes); masq-client table \(clientTime); \
                masqd VmHWM before \(before.peak) KiB, after curl \(afterCurl.peak) KiB, after all \(after.peak) KiB \
                (RSS now \(after.current) KiB)
                """
            print(report)
            try? report.write(toFile: "/tmp/masq-streaming-measurement.txt", atomically: true, encoding: .utf8)
            // Bounded: streaming 120k flows must not grow the daemon by the size of the dump.
            let dumpKiB = (Int(curl.stdout) ?? 0) / 1024
            #expect(afterCurl.peak - before.peak < max(dumpKiB / 4, 16_384), "\(report)")
        }
    }
}
}
