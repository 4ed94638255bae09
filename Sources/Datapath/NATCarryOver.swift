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
/// their TCP state from the seen bits of both their entries. A flow's two entries go over
/// together or not at all, so a smaller table keeps the whole flows that fit and no half whose
/// other half was left behind (that half would hold a slot and pass no reply); a lone half of
/// the old table is left behind. `masq_nat_v6` has had one layout only.
enum NATCarryOver {
    struct Report: Equatable {
        /// Entries copied, both of each pair (an inbound flow's one).
        var copied = 0
        /// Entries that did not fit the new table.
        var lost = 0
        /// Reply entries whose flow's egress entry was gone from the old table: not copied.
        var loneHalves = 0
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
            return try copyPairs(old.map, to: new, batchSize: batchSize, key: masq_nat_key_v6.self,
                                 value: masq_nat_entry_v6.self) { _, v in v }
        }
        guard old.keySize == UInt32(MemoryLayout<masq_nat_key_v4>.size) else {
            throw BPFError("carry over", "map \(old.map.name): key size \(old.keySize) is not this datapath's",
                           errno: EINVAL)
        }
        switch Int(old.valueSize) {
        case MemoryLayout<masq_nat_entry_v4>.size:
            return try copyPairs(old.map, to: new, batchSize: batchSize, key: masq_nat_key_v4.self,
                                 value: masq_nat_entry_v4.self) { _, v in v }
        case Int(MASQ_NAT_ENTRY_V4_V1_SIZE):
            return try copyPairs(old.map, to: new, batchSize: batchSize, key: masq_nat_key_v4.self,
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

    /// Copies the old table flow by flow: each egress entry with the reply entry that maps back
    /// to it (or alone when its reply entry is gone: the datapath re-creates it), an inbound
    /// entry alone; reply entries are copied with their flow's egress entry, and left behind
    /// when it is gone. Once the new table is full, nothing more goes over.
    private static func copyPairs<K: NATKey & BitwiseCopyable, V: BitwiseCopyable>(
        _ old: BPFMap, to new: BPFMap, batchSize: Int, key: K.Type, value: V.Type,
        convert: (K, V) -> K.Value
    ) throws -> Report where K.Value: BitwiseCopyable {
        var report = Report()
        var token: UInt32?
        repeat {
            let batch = try old.lookupBatch(from: token, count: batchSize, key: K.self, value: V.self)
            var keys: [K] = [], values: [K.Value] = []
            /// Where each flow's entries start in keys: a flow is copied whole or not at all.
            var flowStarts: [Int] = []
            /// The entry at `other` in the old table when it is the other half of `key`'s flow.
            func half(_ other: K?, of key: K) -> K.Value? {
                guard let other, let raw = try? old.lookup(other, as: V.self) else { return nil }
                let entry = convert(other, raw)
                return NATEntries.partner(other, entry).map { bytesEqual($0, key) } == true ? entry : nil
            }
            for (key, raw) in batch.entries {
                let entry = convert(key, raw)
                let other = NATEntries.partner(key, entry)
                guard key.dir == UInt8(MASQ_DIR_EGRESS) else {
                    // A reply entry: its flow's egress entry brings it, or it belongs to none.
                    if half(other, of: key) == nil { report.loneHalves += 1 }
                    continue
                }
                flowStarts.append(keys.count)
                keys.append(key)
                values.append(entry)
                if let other, let reply = half(other, of: key) {
                    keys.append(other)
                    values.append(reply)
                }
            }
            var count = UInt32(keys.count)
            if count > 0, bpf_map_update_batch(new.fd, &keys, &values, &count, nil) != 0 {
                let code = errno
                guard code == E2BIG || code == ENOMEM else {
                    throw BPFError("carry over", "map \(new.name)", errno: code)
                }
                // Full: a flow the batch cut in two loses the half that went in.
                if Int(count) < keys.count, !flowStarts.contains(Int(count)),
                   let cut = flowStarts.last(where: { $0 < Int(count) }) {
                    for i in cut..<Int(count) { _ = bpf_map_delete_elem(new.fd, &keys[i]) }
                    count = UInt32(cut)
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
