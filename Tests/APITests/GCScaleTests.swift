@preconcurrency import Glibc
import API
import CLibbpf
import CMasq
import Foundation
import Testing

@testable import Daemon
@testable import Datapath

extension LiveAPITests {
/// The real masqd's conntrack GC over a table of a million entries: the pass's duration and
/// the daemon's peak memory (benchmarks/README.md). The table is filled directly with
/// BPF_MAP_UPDATE_BATCH on the pinned map: 512,000 TCP flows, a quarter of them closed and idle
/// past the closing lifetime, so a pass reads 1,024,000 entries and deletes 256,000.
@Suite("conntrack GC at scale", .serialized)
struct GCScaleTests {
    static let flows = 512_000

    @Test("a GC pass over a million entries runs in bounded daemon memory")
    func millionEntries() async throws {
        // MASQD_BIN: measure another build (benchmarks/README.md uses a release build).
        let masqd = try ProcessInfo.processInfo.environment["MASQD_BIN"] ?? builtBinary("masqd")
        try await DaemonSandbox.with { sandbox in
            try await sandbox.addDevice()
            let process = try sandbox.start([masqd, "run"] + sandbox.masqdFlags([
                // The pass after the start's comes 15 s later (10 s, then 1.5x for an empty
                // table): the table is full by then.
                "--log-level", "info", "--nat-max-entries", "1048576", "--conntrack-gc-interval", "60s",
            ]))
            try await sandbox.waitHealthy()
            let pid = daemonPID(process)
            let startup = memory(of: pid)

            let fd = bpf_obj_get(sandbox.bpffs + "/" + MASQ_MAP_NAT_V4)
            #expect(fd >= 0)
            defer { close(fd) }
            try Self.fill(BPFMap(name: MASQ_MAP_NAT_V4, fd: fd, maxEntries: 0), flows: Self.flows)
            let filled = Date()

            // The first pass that started once the table was full.
            var pass: (seconds: Double, entries: Int, deleted: Int)?
            let deadline = ContinuousClock.now + .seconds(300)
            while pass == nil, ContinuousClock.now < deadline {
                // Seldom: each /v1/status counts the table, a walk of its own.
                try await Task.sleep(for: .seconds(2))
                let gc = try await Self.gc(sandbox)
                if let last = gc.lastPass, let seconds = gc.lastPassSeconds, let end = gc.lastPassAt,
                   end.addingTimeInterval(-seconds) > filled {
                    pass = (seconds, last.entries, last.deletedEntries)
                }
            }
            let measured = try #require(pass, "no GC pass over the filled table within 300 s: \(sandbox.log)")
            let after = memory(of: pid)
            let report = """
                GC pass over \(measured.entries) entries (\(measured.deleted) deleted): \
                \(String(format: "%.3f", measured.seconds)) s; masqd VmHWM at start \(startup.peak) KiB, \
                after the passes \(after.peak) KiB (RSS now \(after.current) KiB)
                """
            print(report)
            try? report.write(toFile: "/tmp/masq-gc-measurement.txt", atomically: true, encoding: .utf8)
            #expect(measured.entries >= 2 * Self.flows - 1, "\(report)")
            #expect(measured.deleted == Self.flows / 2, "a quarter of the flows, both entries: \(report)")
            #expect(after.peak <= 64 * 1024, "masqd's peak RSS stays within 64 MiB: \(report)")
        }
    }

    /// The GC figures of /v1/status.
    static func gc(_ sandbox: DaemonSandbox) async throws -> StatusResponse.ConntrackGC {
        let r = try await TestHTTP.request(socketPath: sandbox.socketPath, method: .GET, uri: "/v1/status")
        return try APIJSON.decoder().decode(StatusResponse.self, from: r.body).conntrackGC
    }

    /// `flows` TCP pairs, established but for every `closedEvery`th one (nil: none), closed a
    /// minute ago.
    static func fill(_ nat: BPFMap, flows: Int, closedEvery: Int? = 4) throws {
        let now = NATEntries.bootTimeNow()
        let snat = IPv4Address("100.0.0.1")!.networkOrder, remote = IPv4Address("100.0.0.2")!.networkOrder
        var keys: [masq_nat_key_v4] = []
        var values: [masq_nat_entry_v4] = []
        for i in 0..<flows {
            let pod = IPv4Address(hostOrder: IPv4Address("10.244.0.0")!.hostOrder | UInt32(i >> 16) << 8 | 1).networkOrder
            let podPort = UInt16(truncatingIfNeeded: i).bigEndian
            let snatPort = UInt16(truncatingIfNeeded: i).bigEndian, remotePort = UInt16(8000 + i >> 16).bigEndian
            var out = masq_nat_entry_v4()
            out.to_addr = snat
            out.to_port = snatPort
            // Closed a minute ago: past the 10 s closing lifetime.
            let closed = closedEvery.map { i % $0 == 0 } ?? false
            out.tcp_state = UInt8(closed ? MASQ_TCP_CLOSING : MASQ_TCP_ESTABLISHED)
            out.created = now
            out.last_seen = closed ? now - 60_000_000_000 : now
            var back = out
            back.to_addr = pod
            back.to_port = podPort
            keys.append(masq_nat_key_v4(saddr: pod, daddr: remote, sport: podPort, dport: remotePort,
                                        proto: 6, dir: UInt8(MASQ_DIR_EGRESS), pad: 0))
            values.append(out)
            keys.append(masq_nat_key_v4(saddr: remote, daddr: snat, sport: remotePort, dport: snatPort,
                                        proto: 6, dir: UInt8(MASQ_DIR_INGRESS), pad: 0))
            values.append(back)
        }
        var count = UInt32(keys.count)
        guard bpf_map_update_batch(nat.fd, &keys, &values, &count, nil) == 0 else {
            throw TestFailure("batch update of \(keys.count) entries stopped after \(count): errno \(errno)")
        }
    }
}
}
