// A NAT table that has to be recreated at load (another nat-max-entries, map type or entry
// layout) has its flows carried over into the new one (issue 11, finding 10). Loads the
// daemon's Datapath with pins under a private bpffs root; nothing is attached.

@preconcurrency import Glibc
import CLibbpf
import CMasq
import Foundation
import Logging
import Testing
@testable import Daemon
@testable import Datapath

@Suite("NAT table carry-over", .serialized)
struct CarryOverTests {
    private let logger = Logger(label: "carry-over-test")

    private func config(root: String, entries: UInt32) -> DaemonConfig {
        var config = DaemonConfig()
        config.bpffsRoot = root
        config.natMaxEntries = entries
        return config
    }

    /// Runs `body` with a fresh pin root, removed afterwards also on failure.
    private func withRoot(_ body: (String) async throws -> Void) async throws {
        let root = "/sys/fs/bpf/masq-test-\(getpid())-carry"
        try? Datapath.uninstall(root: root, logger: logger)
        defer { try? Datapath.uninstall(root: root, logger: logger) }
        try await body(root)
    }

    /// A pair as the datapath writes it: pod1:sport -> server:443 leaving as snat:port.
    private func writePair(_ nat: BPFMap, sport: UInt16, port: UInt16, tcpState: Int32) throws {
        var out = masq_nat_entry_v4()
        out.to_addr = Net.snat.raw
        out.to_port = be16(port)
        out.tcp_state = UInt8(tcpState)
        out.last_seen = 1
        var back = out
        back.to_addr = Net.pod1.raw
        back.to_port = be16(sport)
        try nat.update(natKey(Net.server, Net.snat, sport: 443, dport: port, proto: Proto.tcp, dir: MASQ_DIR_INGRESS), back)
        try nat.update(natKey(Net.pod1, Net.server, sport: sport, dport: 443, proto: Proto.tcp, dir: MASQ_DIR_EGRESS), out)
    }

    @Test("a restart with a larger nat-max-entries keeps every flow, with its port and state")
    func largerTable() async throws {
        try await withRoot { root in
            do {
                let first = try Datapath(config: config(root: root, entries: 1024), logger: logger)
                let nat = try await first.map(MASQ_MAP_NAT_V4)
                for i in UInt16(0)..<100 {
                    try writePair(nat, sport: 1000 + i, port: 50000 + i, tcpState: MASQ_TCP_ESTABLISHED)
                }
            }
            let second = try Datapath(config: config(root: root, entries: 4096), logger: logger)
            let nat = try await second.map(MASQ_MAP_NAT_V4)
            #expect(nat.maxEntries == 4096)
            let entries = try nat.entries(key: masq_nat_key_v4.self, value: masq_nat_entry_v4.self)
            #expect(entries.count == 200)
            let fwd = try #require(try nat.lookup(natKey(Net.pod1, Net.server, sport: 1042, dport: 443, proto: Proto.tcp,
                                                        dir: MASQ_DIR_EGRESS), as: masq_nat_entry_v4.self))
            #expect(host16(fwd.to_port) == 50042 && fwd.tcp_state == UInt8(MASQ_TCP_ESTABLISHED))
        }
    }

    @Test("the replaced tables are closed once their flows are carried over: their memlock goes back at once, not at exit")
    func replacedTablesClosed() async throws {
        try await withRoot { root in
            do {
                let first = try Datapath(config: config(root: root, entries: 1024), logger: logger)
                try writePair(try await first.map(MASQ_MAP_NAT_V4), sport: 1000, port: 50000, tcpState: MASQ_TCP_ESTABLISHED)
            }
            let oldIDs = try [MASQ_MAP_NAT_V4, MASQ_MAP_NAT_V6].map { try #require(pinnedMapID(root + "/" + $0)) }
            let second = try Datapath(config: config(root: root, entries: 4096), logger: logger)
            let nat = try await second.map(MASQ_MAP_NAT_V4)
            #expect(try nat.entries(key: masq_nat_key_v4.self, value: masq_nat_entry_v4.self).count == 2)
            let open = openMapIDs()
            // The walk sees this process's maps: the new tables are among them.
            for name in [MASQ_MAP_NAT_V4, MASQ_MAP_NAT_V6] {
                let id = try #require(pinnedMapID(root + "/" + name))
                #expect(!oldIDs.contains(id) && open.contains(id), "\(name): new table \(id)")
            }
            for id in oldIDs {
                #expect(!open.contains(id), "old table \(id) still open in this process")
                // Unpinned and closed everywhere: the kernel has freed it.
                let fd = bpf_map_get_fd_by_id(id)
                if fd >= 0 { close(fd) }
                #expect(fd < 0 && errno == ENOENT, "old table \(id) still exists")
            }
        }
    }

    /// The id of the map pinned at `path`, nil when there is none.
    private func pinnedMapID(_ path: String) -> UInt32? {
        let fd = bpf_obj_get(path)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var info = bpf_map_info()
        var len = UInt32(MemoryLayout<bpf_map_info>.size)
        return bpf_obj_get_info_by_fd(fd, &info, &len) == 0 ? info.id : nil
    }

    /// The ids of the BPF maps this process has open, from /proc/self/fdinfo's `map_id:` lines.
    private func openMapIDs() -> Set<UInt32> {
        let dir = "/proc/self/fdinfo"
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return Set(fds.compactMap { fd in
            guard let text = try? String(contentsOfFile: dir + "/" + fd, encoding: .utf8) else { return nil }
            return text.split(separator: "\n").lazy
                .first { $0.hasPrefix("map_id:") }
                .flatMap { UInt32($0.dropFirst("map_id:".count).trimmingCharacters(in: .whitespaces)) }
        })
    }

    @Test("a smaller table keeps the whole flows that fit, never one half of a flow, and leaves lone halves behind")
    func smallerTable() throws {
        let old = try BPFObject(bytes: EmbeddedDatapath.bytes, pinRoot: nil, maxEntries: [MASQ_MAP_NAT_V4: 256])
        let oldNAT = try old.map(MASQ_MAP_NAT_V4)
        for i in UInt16(0)..<100 {
            try writePair(oldNAT, sport: 1000 + i, port: 50000 + i, tcpState: MASQ_TCP_ESTABLISHED)
        }
        // A reply entry whose flow's egress entry is gone.
        var lone = masq_nat_entry_v4()
        lone.to_addr = Net.pod1.raw
        lone.to_port = be16(999)
        try oldNAT.update(natKey(Net.server, Net.snat, sport: 443, dport: 59999, proto: Proto.tcp, dir: MASQ_DIR_INGRESS), lone)
        // An odd size: the last flow that would go in has room for one half only.
        for size in [UInt32(64), 63] {
            let new = try BPFObject(bytes: EmbeddedDatapath.bytes, pinRoot: nil, maxEntries: [MASQ_MAP_NAT_V4: size])
            let replaced = ReplacedMap(name: MASQ_MAP_NAT_V4, fd: dup(oldNAT.fd), keySize: 16,
                                       valueSize: UInt32(MemoryLayout<masq_nat_entry_v4>.size), maxEntries: 256)
            let newNAT = try new.map(MASQ_MAP_NAT_V4)
            let report = try NATCarryOver.run(from: replaced, to: newNAT, batchSize: 32)
            let copied = Int(size / 2 * 2)
            #expect(report.copied == copied && report.lost == 200 - copied && report.loneHalves == 1, "\(size): \(report)")
            let entries = try newNAT.entries(key: masq_nat_key_v4.self, value: masq_nat_entry_v4.self)
            #expect(entries.count == copied)
            for (key, value) in entries {
                let other = try #require(NATEntries.partner(key, value))
                #expect(try newNAT.lookup(other, as: masq_nat_entry_v4.self) != nil, "\(size): a half without its flow's other half")
            }
        }
    }

    @Test("a table of the layout before tcp_state is carried over with each TCP flow's state from its seen bits")
    func oldLayout() async throws {
        try await withRoot { root in
            _ = try BPFFS.prepare(root: root)
            // The pin an older masqd left: an LRU hash of 48-byte entries.
            let fd = bpf_map_create(BPF_MAP_TYPE_LRU_HASH, MASQ_MAP_NAT_V4, 16, UInt32(MASQ_NAT_ENTRY_V4_V1_SIZE), 1024, nil)
            try #require(fd >= 0)
            defer { close(fd) }
            #expect(bpf_obj_pin(fd, root + "/" + MASQ_MAP_NAT_V4) == 0)
            let old = BPFMap(name: MASQ_MAP_NAT_V4, fd: fd, maxEntries: 1024)
            // (sport, egress seen, ingress seen, expected state)
            let flows: [(UInt16, UInt32, UInt32, Int32)] = [
                (1000, MASQ_SEEN_SYN, MASQ_SEEN_SYNACK | MASQ_SEEN_REPLY, MASQ_TCP_ESTABLISHED),
                (1001, MASQ_SEEN_SYN, 0, MASQ_TCP_SYN_SENT),
                (1002, MASQ_SEEN_SYN | MASQ_SEEN_FIN, MASQ_SEEN_SYNACK | MASQ_SEEN_REPLY, MASQ_TCP_FIN_WAIT),
                (1003, MASQ_SEEN_SYN | MASQ_SEEN_FIN, MASQ_SEEN_SYNACK | MASQ_SEEN_FIN | MASQ_SEEN_REPLY, MASQ_TCP_CLOSING),
            ]
            for (i, flow) in flows.enumerated() {
                let port = UInt16(50000 + i)
                var out = masq_nat_entry_v4()
                out.to_addr = Net.snat.raw
                out.to_port = be16(port)
                out.seen = UInt8(flow.1)
                out.packets = 7
                var back = out
                back.to_addr = Net.pod1.raw
                back.to_port = be16(flow.0)
                back.seen = UInt8(flow.2)
                try old.update(natKey(Net.pod1, Net.server, sport: flow.0, dport: 443, proto: Proto.tcp, dir: MASQ_DIR_EGRESS),
                               v1(out))
                try old.update(natKey(Net.server, Net.snat, sport: 443, dport: port, proto: Proto.tcp, dir: MASQ_DIR_INGRESS),
                               v1(back))
            }

            let dp = try Datapath(config: config(root: root, entries: 1024), logger: logger)
            let nat = try await dp.map(MASQ_MAP_NAT_V4)
            #expect(try nat.entries(key: masq_nat_key_v4.self, value: masq_nat_entry_v4.self).count == 8)
            for (i, flow) in flows.enumerated() {
                let fwd = try #require(try nat.lookup(natKey(Net.pod1, Net.server, sport: flow.0, dport: 443, proto: Proto.tcp,
                                                            dir: MASQ_DIR_EGRESS), as: masq_nat_entry_v4.self))
                #expect(host16(fwd.to_port) == UInt16(50000 + i) && fwd.packets == 7)
                #expect(fwd.tcp_state == UInt8(flow.3), "flow \(flow.0)")
            }
        }
    }

    /// The first 48 bytes of an entry: the v1 layout.
    private func v1(_ entry: masq_nat_entry_v4) -> (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) {
        withUnsafeBytes(of: entry) { $0.loadUnaligned(as: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64).self) }
    }
}
