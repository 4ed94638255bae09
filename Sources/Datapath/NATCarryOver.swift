@preconcurrency import Glibc
import CLibbpf
import NetworkTypes
import CMasq

/// Carries the flows of a replaced `masq_nat_v4` or `masq_nat_v6` over into the new one, so that a restart
/// with another `nat-max-entries`, map type or entry layout keeps established connections
/// (with the ports they were given) instead of resetting them.
///
/// Runs at load, before the new programs are attached: the new table is still private, and
/// the old programs go on serving the old one meanwhile. Entries of today's layout are copied
/// as they are; IPv4 entries of the layout before `tcp_state` (`MASQ_NAT_ENTRY_V4_V1_SIZE`) get
/// their TCP state from the seen bits of both their entries. A smaller table keeps what fits.
/// `masq_nat_v6` has had one layout only.
enum NATCarryOver {
    struct Report: Equatable {
        var copied = 0
        /// Entries that did not fit the new table.
        var lost = 0
    }

    /// A value of the old layout: 48 bytes, the first 48 of today's.
    private typealias EntryV1 = (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)

    static func run(from old: ReplacedMap, to new: BPFMap, batchSize: Int = 4096) throws -> Report {
        if old.map.name == MASQ_MAP_NAT_V6 {
            guard old.keySize == UInt32(MemoryLayout<masq_nat_key_v6>.size),
                  old.valueSize == UInt32(MemoryLayout<masq_nat_entry_v6>.size) else {
                throw BPFError("carry over", "map \(old.map.name): key size \(old.keySize) or entry size \(old.valueSize) is not this datapath's",
                               errno: EINVAL)
            }
            return try copy(old.map, to: new, batchSize: batchSize, key: masq_nat_key_v6.self,
                            value: masq_nat_entry_v6.self) { _, v in v }
        }
        guard old.keySize == UInt32(MemoryLayout<masq_nat_key_v4>.size) else {
            throw BPFError("carry over", "map \(old.map.name): key size \(old.keySize) is not this datapath's",
                           errno: EINVAL)
        }
        switch Int(old.valueSize) {
        case MemoryLayout<masq_nat_entry_v4>.size:
            return try copy(old.map, to: new, batchSize: batchSize, key: masq_nat_key_v4.self,
                            value: masq_nat_entry_v4.self) { _, v in v }
        case Int(MASQ_NAT_ENTRY_V4_V1_SIZE):
            return try copy(old.map, to: new, batchSize: batchSize, key: masq_nat_key_v4.self,
                            value: EntryV1.self) { key, v1 in
                var entry = upgrade(v1)
                if L4Protocol(number: key.proto) == .tcp {
                    let partner = NATEntries.partner(key, entry)
                        .flatMap { try? old.map.lookup($0, as: EntryV1.self) }.map(upgrade)
                    entry.tcp_state = tcpState(own: entry, partner: partner)
                }
                return entry
            }
        default:
            throw BPFError("carry over", "map \(old.map.name): entry size \(old.valueSize) is not a known layout",
                           errno: EINVAL)
        }
    }

    private static func copy<K: BitwiseCopyable, V: BitwiseCopyable, Entry: BitwiseCopyable>(
        _ old: BPFMap, to new: BPFMap, batchSize: Int, key: K.Type, value: V.Type,
        convert: (K, V) -> Entry
    ) throws -> Report {
        var report = Report()
        var token: UInt32?
        repeat {
            let batch = try old.lookupBatch(from: token, count: batchSize, key: K.self, value: V.self)
            var keys = batch.entries.map(\.key)
            var values = batch.entries.map { convert($0.key, $0.value) }
            var count = UInt32(keys.count)
            if count > 0, bpf_map_update_batch(new.fd, &keys, &values, &count, nil) != 0 {
                let code = errno
                guard code == E2BIG || code == ENOMEM else {
                    throw BPFError("carry over", "map \(new.name)", errno: code)
                }
            }
            report.copied += Int(count)
            report.lost += keys.count - Int(count)
            token = batch.next
        } while token != nil
        return report
    }

    /// A v1 value in today's layout: the same first 48 bytes, the rest zero.
    private static func upgrade(_ v1: EntryV1) -> masq_nat_entry_v4 {
        var entry = masq_nat_entry_v4()
        withUnsafeMutableBytes(of: &entry) { dst in
            withUnsafeBytes(of: v1) { dst.copyMemory(from: $0) }
        }
        return entry
    }

    /// The TCP state the v1 seen bits of a flow's entries stand for (v1 kept them per entry,
    /// without a state): a FIN from both sides or a RST is closing, one FIN fin-wait, a
    /// SYN-ACK or no SYN at all established, a lone SYN syn-sent.
    static func tcpState(own: masq_nat_entry_v4, partner: masq_nat_entry_v4?) -> UInt8 {
        let fin = UInt8(MASQ_SEEN_FIN), rst = UInt8(MASQ_SEEN_RST)
        let seen = own.seen | (partner?.seen ?? 0)
        if seen & rst != 0 || (own.seen & fin != 0 && (partner?.seen ?? 0) & fin != 0) {
            return UInt8(MASQ_TCP_CLOSING)
        }
        if seen & fin != 0 { return UInt8(MASQ_TCP_FIN_WAIT) }
        if seen & UInt8(MASQ_SEEN_SYNACK) != 0 || seen & UInt8(MASQ_SEEN_SYN) == 0 {
            return UInt8(MASQ_TCP_ESTABLISHED)
        }
        return UInt8(MASQ_TCP_SYN_SENT)
    }
}
