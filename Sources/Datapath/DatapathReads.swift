@preconcurrency import Glibc
import CLibbpf
import CMasq
import Foundation
import NetworkTypes

// Read access to the datapath's maps for the control API: what the datapath holds, read back
// (never what the daemon believes it wrote). Every method returns Sendable values.

/// The datapath's decision inputs as the maps hold them: masq_config, masq_devices and the
/// exclusion maps. `MasqueradeDecision` decides on this value exactly as the programs do.
public struct DatapathView: Sendable, Equatable {
    public struct Device: Sendable, Equatable {
        public var snatV4: IPv4Address?
        public var snatV6: IPv6Address?

        public init(snatV4: IPv4Address?, snatV6: IPv6Address? = nil) {
            self.snatV4 = snatV4
            self.snatV6 = snatV6
        }
    }

    public var ipv4Enabled = false
    public var ipv6Enabled = false
    public var nonMasqueradeEnabled = false
    /// masq_config's native_v4 / native_v6 and their lengths, as stored (the mask is applied
    /// when matching).
    public var nativeRoutingV4: IPPrefix?
    public var nativeRoutingV6: IPPrefix?
    public var portRange: ClosedRange<UInt16> = 32768...65535
    /// masq_devices by ifindex.
    public var devices: [UInt32: Device] = [:]
    public var podCIDRsV4: [IPPrefix] = []
    public var podCIDRsV6: [IPPrefix] = []
    public var nonMasqueradeV4: [IPPrefix] = []
    public var nonMasqueradeV6: [IPPrefix] = []
    public var nodeIPsV4: Set<IPv4Address> = []
    public var nodeIPsV6: Set<IPv6Address> = []

    public init() {}
}

/// A datapath map's fill level.
public struct MapFill: Sendable, Equatable {
    public var name: String
    public var entries: Int
    public var maxEntries: Int
    /// When `entries` was counted, for a table counted by the last walk (the NAT tables); nil
    /// for a map counted now.
    public var asOf: Date?
}

extension masq_nat_key_v4: @unchecked @retroactive Sendable {}
extension masq_nat_entry_v4: @unchecked @retroactive Sendable {}
extension masq_nat_key_v6: @unchecked @retroactive Sendable {}
extension masq_nat_entry_v6: @unchecked @retroactive Sendable {}

extension BPFMap {
    /// One `BPF_MAP_LOOKUP_BATCH` of at most `count` entries of a hash map, starting at `token`
    /// (nil: the start). The kernel returns whole buckets; a bucket bigger than `count` makes
    /// this retry with room for it.
    public func lookupBatch<K: BitwiseCopyable, V: BitwiseCopyable>(
        from token: UInt32?, count: Int, key: K.Type = K.self, value: V.Type = V.self
    ) throws -> (entries: [(key: K, value: V)], next: UInt32?) {
        var entries: [(key: K, value: V)] = []
        var next: UInt32?
        try forEachBatch(from: token, count: count, key: K.self, value: V.self) { keys, values in
            entries = zip(keys, values).map { (key: $0, value: $1) }
            return false
        } next: { next = $0 }
        return (entries, next)
    }

    /// Walks the map in `BPF_MAP_LOOKUP_BATCH`es of about `count` entries from `token`, handing
    /// each batch to `body` in buffers reused from batch to batch (nothing grows with the map),
    /// until the map ends or `body` returns false; `next` gets where the walk stopped (nil: the
    /// end). Entries deleted between batches are not read again; the kernel's order is by bucket.
    public func forEachBatch<K: BitwiseCopyable, V: BitwiseCopyable>(
        from token: UInt32? = nil, count: Int, key: K.Type = K.self, value: V.Type = V.self,
        _ body: (UnsafeBufferPointer<K>, UnsafeBufferPointer<V>) throws -> Bool,
        next: (UInt32?) -> Void = { _ in }
    ) throws {
        var capacity = max(count, 1)
        var keys = UnsafeMutablePointer<K>.allocate(capacity: capacity)
        var values = UnsafeMutablePointer<V>.allocate(capacity: capacity)
        defer { keys.deallocate(); values.deallocate() }
        var token = token
        while true {
            var inToken = token ?? 0
            var outToken: UInt32 = 0
            var n = UInt32(capacity)
            let err = withUnsafeMutablePointer(to: &inToken) { inPtr in
                bpf_map_lookup_batch(fd, token == nil ? nil : UnsafeMutableRawPointer(inPtr), &outToken,
                                     keys, values, &n, nil)
            }
            let code = err == 0 ? 0 : errno
            if code == ENOSPC && n == 0 {
                capacity *= 2
                keys.deallocate()
                values.deallocate()
                keys = UnsafeMutablePointer<K>.allocate(capacity: capacity)
                values = UnsafeMutablePointer<V>.allocate(capacity: capacity)
                continue
            }
            if code != 0 && code != ENOENT {
                throw BPFError("batch lookup", "map \(name)", errno: code)
            }
            // ENOENT: the end of the map, with this last (possibly partial) count.
            token = code == ENOENT ? nil : outToken
            let goOn = try body(UnsafeBufferPointer(start: keys, count: Int(n)), UnsafeBufferPointer(start: values, count: Int(n)))
            if !goOn || token == nil {
                next(token)
                return
            }
        }
    }

    /// The sum over CPUs of a per-CPU array's u64 counter at `index`.
    public func perCPUSum(_ index: UInt32) throws -> UInt64 {
        try lookupPerCPU(index, as: UInt64.self).reduce(0, &+)
    }
}

extension Datapath {
    /// masq_config, masq_devices and the exclusion maps, read back.
    public func readView() throws -> DatapathView {
        try object.readView()
    }

    /// What of the applied `state` changed behind masqd's back, one line each; empty when all
    /// is in place: the maps read back (masq_config, masq_devices, the exclusion maps of both
    /// families), masq's programs at both hooks of each device in force (a deleted clsact
    /// qdisc, a removed link pin), and the maps' pins (a restart would start from empty maps).
    public func drift(from state: DesiredState) throws -> [String] {
        var drift: [String] = []
        if !(try mapsHold(state)) { drift.append("the config maps no longer hold the applied state") }
        let programs = [(HookDirection.ingress, try object.programID(MASQ_PROG_INGRESS)),
                        (.egress, try object.programID(MASQ_PROG_EGRESS))]
        for device in state.devices {
            for (direction, id) in programs
            where !(try attachments.isAttached(progID: id, ifindex: device.ifindex, direction, mode: mode)) {
                drift.append("\(device.name): masq's program is gone from \(direction.rawValue) (\(mode.rawValue))")
            }
        }
        drift += object.missingPins().map { "pin \($0) is gone" }
        drift += rootDrift()
        return drift
    }

    /// Whether the maps hold what applying `state` wrote.
    private func mapsHold(_ state: DesiredState) throws -> Bool {
        let view = try readView()
        var expected = DatapathView()
        expected.ipv4Enabled = state.ipv4Enabled
        expected.ipv6Enabled = state.ipv6Enabled
        expected.nonMasqueradeEnabled = state.nonMasqueradeEnabled
        expected.nativeRoutingV4 = state.nativeRoutingV4
        expected.nativeRoutingV6 = state.nativeRoutingV6
        expected.portRange = state.portRange
        for device in state.devices {
            expected.devices[device.ifindex] = DatapathView.Device(snatV4: device.snatV4, snatV6: device.snatV6)
        }
        expected.podCIDRsV4 = state.podCIDRsV4.sorted()
        expected.podCIDRsV6 = state.podCIDRsV6.sorted()
        // An unknown ip-masq-agent list (nil) leaves its map as it is.
        expected.nonMasqueradeV4 = state.nonMasqueradeV4?.sorted() ?? view.nonMasqueradeV4
        expected.nonMasqueradeV6 = state.nonMasqueradeV6?.sorted() ?? view.nonMasqueradeV6
        expected.nodeIPsV4 = state.nodeIPsV4
        expected.nodeIPsV6 = state.nodeIPsV6
        return view == expected
    }

    /// The non-masquerade list as the maps hold it: IPv4, then IPv6.
    public func nonMasqueradeCIDRs() throws -> [IPPrefix] {
        try object.prefixes(MASQ_MAP_NONMASQ_V4, as: masq_lpm_v4.self)
            + object.prefixes(MASQ_MAP_NONMASQ_V6, as: masq_lpm_v6.self)
    }

    /// The entries under `keys` (nil where there is none).
    public func natLookup(_ keys: [masq_nat_key_v4]) throws -> [masq_nat_entry_v4?] {
        let nat = try map(MASQ_MAP_NAT_V4)
        return try keys.map { try nat.lookup($0, as: masq_nat_entry_v4.self) }
    }

    /// The IPv6 entries under `keys` (nil where there is none).
    public func natLookup(_ keys: [masq_nat_key_v6]) throws -> [masq_nat_entry_v6?] {
        let nat = try map(MASQ_MAP_NAT_V6)
        return try keys.map { try nat.lookup($0, as: masq_nat_entry_v6.self) }
    }

    /// Entries and capacity of each map, for status and /metrics: the NAT tables as `nat` counted
    /// them (a walk of a large table per request would cost more than the answer is worth), the
    /// other maps, which are small, counted now.
    public func tableFill(nat: NATSummary) throws -> [MapFill] {
        func table(_ name: String, _ count: (BPFMap) throws -> Int) throws -> MapFill {
            let m = try map(name)
            return MapFill(name: name, entries: try count(m), maxEntries: Int(m.maxEntries))
        }
        let natTables = try nat.tables.map { summary in
            MapFill(name: summary.map, entries: summary.entries, maxEntries: Int(try map(summary.map).maxEntries),
                    asOf: nat.asOf)
        }
        return natTables + [
            try table(MASQ_MAP_PODS_V4) { try $0.keys(as: masq_lpm_v4.self).count },
            try table(MASQ_MAP_NONMASQ_V4) { try $0.keys(as: masq_lpm_v4.self).count },
            try table(MASQ_MAP_NODES_V4) { try $0.keys(as: UInt32.self).count },
            try table(MASQ_MAP_PODS_V6) { try $0.keys(as: masq_lpm_v6.self).count },
            try table(MASQ_MAP_NONMASQ_V6) { try $0.keys(as: masq_lpm_v6.self).count },
            try table(MASQ_MAP_NODES_V6) { try $0.keys(as: masq_addr_v6.self).count },
            try table(MASQ_MAP_DEVICES) { try $0.keys(as: UInt32.self).count },
        ]
    }

    /// masq_drops summed over CPUs, for every known reason.
    public func drops() throws -> [(reason: DropReason, count: UInt64)] {
        let drops = try map(MASQ_MAP_DROPS)
        return try DropReason.all.map { ($0, try drops.perCPUSum($0.code)) }
    }
}

extension BPFObject {
    /// masq_config, masq_devices and the exclusion maps, read back.
    func readView() throws -> DatapathView {
        var view = DatapathView()
        if let cfg = try map(MASQ_MAP_CONFIG).lookup(UInt32(0), as: masq_config.self) {
            view.ipv4Enabled = cfg.flags & UInt32(MASQ_CFG_IPV4_MASQ) != 0
            view.ipv6Enabled = cfg.flags & UInt32(MASQ_CFG_IPV6_MASQ) != 0
            view.nonMasqueradeEnabled = cfg.flags & UInt32(MASQ_CFG_NONMASQ) != 0
            if cfg.flags & UInt32(MASQ_CFG_NATIVE_V4) != 0 {
                view.nativeRoutingV4 = IPPrefix(unchecked: .v4(IPv4Address(networkOrder: cfg.native_v4)),
                                                length: Int(min(cfg.native_v4_len, 32)))
            }
            if cfg.flags & UInt32(MASQ_CFG_NATIVE_V6) != 0 {
                view.nativeRoutingV6 = IPPrefix(unchecked: .v6(IPv6Address(bytes: withUnsafeBytes(of: cfg.native_v6) { Array($0) })),
                                                length: Int(min(cfg.native_v6_len, 128)))
            }
            if cfg.port_min != 0 && cfg.port_max >= cfg.port_min {
                view.portRange = cfg.port_min...cfg.port_max
            }
        }
        for (ifindex, device) in try map(MASQ_MAP_DEVICES).entries(key: UInt32.self, value: masq_device.self) {
            let v4 = device.flags & UInt32(MASQ_DEV_HAS_V4) != 0 ? IPv4Address(networkOrder: device.snat_v4) : nil
            let v6 = device.flags & UInt32(MASQ_DEV_HAS_V6) != 0
                ? IPv6Address(bytes: withUnsafeBytes(of: device.snat_v6) { Array($0) }) : nil
            view.devices[ifindex] = DatapathView.Device(snatV4: v4, snatV6: v6)
        }
        view.podCIDRsV4 = try prefixes(MASQ_MAP_PODS_V4, as: masq_lpm_v4.self)
        view.podCIDRsV6 = try prefixes(MASQ_MAP_PODS_V6, as: masq_lpm_v6.self)
        view.nonMasqueradeV4 = try prefixes(MASQ_MAP_NONMASQ_V4, as: masq_lpm_v4.self)
        view.nonMasqueradeV6 = try prefixes(MASQ_MAP_NONMASQ_V6, as: masq_lpm_v6.self)
        view.nodeIPsV4 = Set(try map(MASQ_MAP_NODES_V4).keys(as: UInt32.self).map(IPv4Address.init(networkOrder:)))
        view.nodeIPsV6 = Set(try map(MASQ_MAP_NODES_V6).keys(as: masq_addr_v6.self).map(IPv6Address.init))
        return view
    }

    /// An LPM map's prefixes, sorted.
    func prefixes<Key: LPMKey & BitwiseCopyable>(_ name: String, as: Key.Type) throws -> [IPPrefix] {
        try map(name).keys(as: Key.self).map(\.prefix).sorted()
    }
}
