@preconcurrency import Glibc
import NetworkTypes
import CLibbpf
import CMasq
import Foundation
import Logging

/// How the programs are attached on this run.
public enum AttachKind: String, Sendable {
    case tcx, tc
}

/// How masqd attaches its programs: tcx links (kernel 6.6+), tc clsact filters, or whichever
/// the kernel has (tcx first).
public enum AttachMode: String, CaseIterable, Sendable {
    case auto, tcx, tc
}

/// Owns every libbpf handle of the running daemon: the loaded object, its pinned maps and the
/// attachments. The one place that writes the datapath's config maps is `apply(_:)`.
public actor Datapath {
    public nonisolated let root: String
    public nonisolated let mode: AttachKind
    let object: BPFObject
    let attachments: Attachments
    private let logger: Logger
    /// masq_config.port_key: the secret of the port probe order. Kept from the pinned config
    /// when there is one, so a restart probes each flow's ports in the same order.
    private let portKey: UInt32
    /// masq_config.generation: moved on after every change of what decides a flow's exclusions,
    /// so that established flows decide them again (masq_abi.h). Continues the pinned config's.
    private var generation: UInt16
    /// The config `apply` last wrote; a change of it moves the generation on.
    private var written: masq_config?
    /// Whether the datapath reports to masq_events (`setEventsEnabled`).
    var eventsEnabled = false
    /// The bpffs root held for this process (`exclusive`).
    private var rootLock: BPFFS.Lock?

    /// Loads the datapath (the embedded object unless `objectBytes` is given), reusing the maps
    /// pinned under `root` by an earlier run so that established flows keep their state (a NAT
    /// table that has to be recreated, for another size or layout, has its flows carried over),
    /// sizes the NAT table to `natMaxEntries`, and resolves the attach mode. Nothing is attached
    /// until `apply(_:)`. `exclusive` (the daemon): holds `root` while this process lives, and
    /// throws `RootInUse`, before touching a pin, when another process holds it.
    public init(root: String, natMaxEntries: UInt32, attachMode: AttachMode,
                objectBytes: [UInt8]? = nil, exclusive: Bool = false, logger: Logger) throws {
        self.root = root
        self.logger = logger
        if let mountPoint = try BPFFS.prepare(root: root) {
            logger.notice("Mounted bpffs", metadata: ["bpffs.mount": "\(mountPoint)"])
        }
        rootLock = exclusive ? try BPFFS.lock(root: root) : nil
        if exclusive { try BPFFS.markNetns(root: root) }
        setLibbpfLogger(logger)
        object = try BPFObject(
            bytes: objectBytes ?? EmbeddedDatapath.bytes,
            pinRoot: root,
            maxEntries: [MASQ_MAP_NAT_V4: natMaxEntries, MASQ_MAP_NAT_V6: natMaxEntries],
            keepReplaced: [MASQ_MAP_NAT_V4, MASQ_MAP_NAT_V6])
        // The old tables close when this init is done with them, after the carry-over.
        let replaced = object.takeReplacedMaps()
        for name in object.replacedPins where replaced[name] == nil {
            logger.info("Pinned map did not match this datapath and was recreated",
                        metadata: ["map.name": "\(name)"])
        }
        for name in [MASQ_MAP_NAT_V4, MASQ_MAP_NAT_V6] {
            guard let old = replaced[name] else { continue }
            do {
                let carried = try NATCarryOver.run(from: old, to: try object.map(name))
                logger.log(level: carried.lost == 0 ? .notice : .warning,
                           "NAT table recreated (size or layout changed); flows carried over, those that fit",
                           metadata: ["map.name": "\(name)", "nat.copied": "\(carried.copied)",
                                      "nat.lost": "\(carried.lost)", "nat.lone_halves_dropped": "\(carried.loneHalves)"])
            } catch {
                logger.warning("NAT table recreated; its flows could not be carried over",
                               metadata: ["map.name": "\(name)", "error": "\(error)"])
            }
        }
        let pinned = try? object.map(MASQ_MAP_CONFIG).lookup(UInt32(0), as: masq_config.self)
        portKey = pinned.flatMap { $0.port_key != 0 ? $0.port_key : nil } ?? UInt32.random(in: 1...UInt32.max)
        generation = pinned?.generation ?? 0
        attachments = Attachments(root: root)
        let egress = try object.programFD(MASQ_PROG_EGRESS)
        switch attachMode {
        case .auto:
            mode = Attachments.tcxSupported(progFD: egress) ? .tcx : .tc
        case .tcx:
            guard Attachments.tcxSupported(progFD: egress) else {
                throw BPFError("attach-mode tcx", "this kernel (tcx needs Linux 6.6 or later)", errno: EOPNOTSUPP)
            }
            mode = .tcx
        case .tc:
            mode = .tc
        }
    }

    /// What one `apply` changed, for the log.
    public struct ApplyReport: Sendable, Equatable {
        public var attached: [String] = []
        public var detached: [UInt32] = []
        public var cidrsAdded = 0
        public var cidrsRemoved = 0
    }

    /// `state` less the devices where another bpffs-root's masq programs run (tcx): those are
    /// that masqd's, so they go to the skipped devices with the reason and are neither written
    /// nor attached here; the next reconcile looks again.
    public func withoutTakenDevices(_ state: DesiredState) throws -> (state: DesiredState, taken: [DeviceTaken]) {
        guard mode == .tcx else { return (state, []) }
        let taken = try state.devices.compactMap { try attachments.taken(ifindex: $0.ifindex, device: $0.name) }
        var state = state
        state.devices.removeAll { device in taken.contains { $0.device == device.name } }
        for device in taken { state.skippedDevices[device.device] = device.description }
        state.takenDevices = Set(taken.map(\.device))
        return (state, taken)
    }

    /// Brings the maps and attachments to `state`. Maps are written before programs are attached
    /// so a program never runs on a device without its config; set-valued maps gain their new
    /// elements before they lose old ones. When anything that decides exclusions changed, the
    /// config's generation moves on last, once the maps hold the change: established flows then
    /// decide their exclusions again at their next packet.
    @discardableResult
    public func apply(_ state: DesiredState) throws -> ApplyReport {
        var report = ApplyReport()
        try reclaimRoot()
        try object.repinMissing()
        var exclusionsChanged = try writeConfig(state)

        // Every SNAT address first: a reply is reverse-translated on whichever device it
        // arrives, so the addresses are known before any device's programs run.
        try syncAddresses(MASQ_MAP_SNAT_V4, Set(state.devices.compactMap(\.snatV4)))
        try syncAddresses(MASQ_MAP_SNAT_V6, Set(state.devices.compactMap(\.snatV6)))
        let devicesMap = try object.map(MASQ_MAP_DEVICES)
        for device in state.devices {
            var value = masq_device()
            value.l2_hdr_len = device.l2HeaderLength
            if let v4 = device.snatV4 {
                value.snat_v4 = v4.networkOrder
                value.flags |= UInt32(MASQ_DEV_HAS_V4)
            }
            if let v6 = device.snatV6 {
                withUnsafeMutableBytes(of: &value.snat_v6) { $0.copyBytes(from: v6.bytes) }
                value.flags |= UInt32(MASQ_DEV_HAS_V6)
            }
            try devicesMap.update(device.ifindex, value)
        }

        var diffs = [try syncPrefixes(MASQ_MAP_PODS_V4, state.podCIDRsV4, as: masq_lpm_v4.self),
                     try syncPrefixes(MASQ_MAP_PODS_V6, state.podCIDRsV6, as: masq_lpm_v6.self)]
        // An unknown ip-masq-agent list (nil) leaves its map as it is.
        if let list = state.nonMasqueradeV4 {
            diffs.append(try syncPrefixes(MASQ_MAP_NONMASQ_V4, list, as: masq_lpm_v4.self))
        }
        if let list = state.nonMasqueradeV6 {
            diffs.append(try syncPrefixes(MASQ_MAP_NONMASQ_V6, list, as: masq_lpm_v6.self))
        }
        for diff in diffs {
            report.cidrsAdded += diff.add.count
            report.cidrsRemoved += diff.remove.count
            exclusionsChanged = exclusionsChanged || !diff.isEmpty
        }
        if try syncAddresses(MASQ_MAP_NODES_V4, state.nodeIPsV4) { exclusionsChanged = true }
        if try syncAddresses(MASQ_MAP_NODES_V6, state.nodeIPsV6) { exclusionsChanged = true }
        if exclusionsChanged {
            try advanceGeneration()
        }

        let egress = try object.programFD(MASQ_PROG_EGRESS)
        let ingress = try object.programFD(MASQ_PROG_INGRESS)
        for device in state.devices {
            for (direction, fd) in [(HookDirection.ingress, ingress), (.egress, egress)] {
                switch mode {
                case .tcx:
                    try attachments.attachTCX(progFD: fd, ifindex: device.ifindex, direction, device: device.name)
                case .tc:
                    try attachments.attachTC(progFD: fd, ifindex: device.ifindex, direction, device: device.name)
                }
            }
            report.attached.append(device.name)
        }

        // Devices no longer in force: take the programs off, then forget their config.
        let desired = Set(state.devices.map(\.ifindex))
        let known = Set(try devicesMap.keys(as: UInt32.self)).union(attachments.pinnedLinkIfindexes())
        for ifindex in known.subtracting(desired).sorted() {
            attachments.detachAll(ifindex: ifindex)
            try devicesMap.delete(ifindex)
            report.detached.append(ifindex)
        }
        return report
    }

    /// The daemon's hold on its bpffs root again, after something removed the root: the
    /// directory, the lock that keeps a second masqd and `uninstall` away, and the network
    /// namespace mark.
    private func reclaimRoot() throws {
        guard let lock = rootLock, !rootDrift().isEmpty else { return }
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        if !lock.holds(root) { rootLock = try BPFFS.lock(root: root) }
        try BPFFS.markNetns(root: root)
    }

    /// What of the daemon's hold on its root is gone (`reclaimRoot` brings it back).
    func rootDrift() -> [String] {
        guard let lock = rootLock else { return [] }
        var drift: [String] = []
        if !lock.holds(root) { drift.append("bpffs-root \(root) was removed: its lock (one masqd a root) is gone") }
        if BPFFS.markedNetns(root: root) != BPFFS.currentNetns() { drift.append("the network namespace mark under \(root) is gone") }
        return drift
    }

    /// Writes masq_config for `state` under the current generation. Returns whether it differs
    /// from the config written last (always on the first apply: the pinned one may be another
    /// masqd's).
    private func writeConfig(_ state: DesiredState) throws -> Bool {
        var cfg = masq_config()
        cfg.port_key = portKey
        cfg.generation = generation
        if state.ipv4Enabled { cfg.flags |= UInt32(MASQ_CFG_IPV4_MASQ) }
        if state.ipv6Enabled { cfg.flags |= UInt32(MASQ_CFG_IPV6_MASQ) }
        if state.nonMasqueradeEnabled { cfg.flags |= UInt32(MASQ_CFG_NONMASQ) }
        if eventsEnabled { cfg.flags |= UInt32(MASQ_CFG_EVENTS) }
        cfg.port_min = state.portRange.lowerBound
        cfg.port_max = state.portRange.upperBound
        if let native = state.nativeRoutingV4, case .v4(let a) = native.address {
            cfg.flags |= UInt32(MASQ_CFG_NATIVE_V4)
            cfg.native_v4 = a.networkOrder
            cfg.native_v4_len = UInt16(native.length)
        }
        if let native = state.nativeRoutingV6, case .v6(let a) = native.address {
            cfg.flags |= UInt32(MASQ_CFG_NATIVE_V6)
            withUnsafeMutableBytes(of: &cfg.native_v6) { $0.copyBytes(from: a.bytes) }
            cfg.native_v6_len = UInt32(native.length)
        }
        try object.map(MASQ_MAP_CONFIG).update(UInt32(0), cfg)
        let changed = written.map { !bytesEqual($0, cfg) } ?? true
        written = cfg
        return changed
    }

    /// Writes `eventsEnabled` into the config `apply` last wrote (before the first apply there
    /// is none yet; that apply writes the switch).
    func writeEventsSwitch() throws {
        guard var cfg = written else { return }
        if eventsEnabled { cfg.flags |= UInt32(MASQ_CFG_EVENTS) } else { cfg.flags &= ~UInt32(MASQ_CFG_EVENTS) }
        try object.map(MASQ_MAP_CONFIG).update(UInt32(0), cfg)
        written = cfg
    }

    /// Moves the generation on (0 stays "never decided", masq_abi.h) and writes it.
    private func advanceGeneration() throws {
        guard var cfg = written else { return }
        generation = generation == UInt16.max ? 1 : generation + 1
        cfg.generation = generation
        try object.map(MASQ_MAP_CONFIG).update(UInt32(0), cfg)
        written = cfg
    }

    /// Brings an LPM map of one family (key `Key`) to `desired`, prefixes of that family.
    private func syncPrefixes<Key: LPMKey & BitwiseCopyable>(_ name: String, _ desired: Set<IPPrefix>, as: Key.Type) throws -> SetDiff<IPPrefix> {
        let map = try object.map(name)
        let current = Set(try map.keys(as: Key.self).map(\.prefix))
        let diff = SetDiff(current: current, desired: desired)
        for prefix in diff.add {
            try map.update(Key(prefix), UInt8(MASQ_CIDR_PRESENT))
        }
        for prefix in diff.remove {
            try map.delete(Key(prefix))
        }
        return diff
    }

    /// Brings a set of addresses of one family (key `key(address)`, the address in network
    /// order; value MASQ_CIDR_PRESENT) to `desired`. Returns whether it changed anything.
    @discardableResult
    private func syncAddresses<Address: Hashable, Key: BitwiseCopyable>(
        _ name: String, _ desired: Set<Address>, key: (Address) -> Key, address: (Key) -> Address
    ) throws -> Bool {
        let map = try object.map(name)
        let current = Set(try map.keys(as: Key.self).map(address))
        let diff = SetDiff(current: current, desired: desired)
        for ip in diff.add { try map.update(key(ip), UInt8(MASQ_CIDR_PRESENT)) }
        for ip in diff.remove { try map.delete(key(ip)) }
        return !diff.isEmpty
    }

    @discardableResult
    private func syncAddresses(_ name: String, _ desired: Set<IPv4Address>) throws -> Bool {
        try syncAddresses(name, desired, key: \.networkOrder, address: IPv4Address.init(networkOrder:))
    }

    @discardableResult
    private func syncAddresses(_ name: String, _ desired: Set<IPv6Address>) throws -> Bool {
        try syncAddresses(name, desired, key: masq_addr_v6.init, address: IPv6Address.init)
    }

    /// A map of the loaded object, for readers (status, conntrack, tests).
    public func map(_ name: String) throws -> BPFMap {
        try object.map(name)
    }

    /// Takes the programs off every device masq attached to and removes everything pinned under
    /// `root`. Works from the pins alone, so it needs no config beyond the root and no load.
    ///
    /// Refuses while a masqd runs on `root` (`RootInUse`), and, unless `force`, from another
    /// network namespace than the one masqd attached in (`UninstallElsewhere`): tc filters are
    /// found by ifindex in the caller's namespace, so from another one the pins would go and the
    /// programs stay, which no masqd could then remove.
    public static func uninstall(root: String, force: Bool = false, logger: Logger) throws {
        // Looked up before the pins go: with root as the mount point, the marker is among them.
        let mountedByMasqd = BPFFS.mountedByMasqd(root: root)
        defer {
            if let mountPoint = mountedByMasqd {
                do {
                    if try BPFFS.unmountIfUnused(mountPoint) {
                        logger.info("Unmounted the bpffs masqd had mounted", metadata: ["bpffs.mount": "\(mountPoint)"])
                    } else {
                        logger.notice("The bpffs masqd mounted holds other pins now; it stays mounted", metadata: ["bpffs.mount": "\(mountPoint)"])
                    }
                } catch {
                    logger.warning("Could not unmount the bpffs masqd had mounted", metadata: ["error": "\(error)"])
                }
            }
        }
        guard FileManager.default.fileExists(atPath: root) else {
            logger.info("Nothing installed", metadata: ["bpffs.root": "\(root)"])
            return
        }
        let lock: BPFFS.Lock
        do {
            lock = try BPFFS.lock(root: root)
        } catch var inUse as RootInUse {
            inUse.uninstalling = true
            throw inUse
        }
        defer { withExtendedLifetime(lock) {} }
        setLibbpfLogger(logger)
        let attachments = Attachments(root: root)
        if !force, let attachedIn = BPFFS.markedNetns(root: root), let here = BPFFS.currentNetns(), attachedIn != here {
            throw UninstallElsewhere(attachedIn: attachedIn, here: here)
        }
        var ifindexes = attachments.pinnedLinkIfindexes()
        let devicesFD = bpf_obj_get(root + "/" + MASQ_MAP_DEVICES)
        if devicesFD >= 0 {
            defer { close(devicesFD) }
            let devices = BPFMap(name: MASQ_MAP_DEVICES, fd: devicesFD, maxEntries: 0)
            ifindexes.formUnion(try devices.keys(as: UInt32.self))
        }
        for ifindex in ifindexes.sorted() {
            var metadata: Logger.Metadata = ["device.ifindex": "\(ifindex)"]
            let found = attachments.detachAll(ifindex: ifindex)
            if found.isEmpty {
                logger.info("Nothing attached here", metadata: metadata)
            } else {
                metadata["attach.kind"] = "\(found.map(\.rawValue).sorted().joined(separator: ","))"
                logger.info("Detached", metadata: metadata)
            }
        }
        // Only masq's pins live under the root: links/ and the maps. The root itself may be a
        // bpffs mount point, which cannot be removed (EBUSY) and stays, empty.
        for entry in try FileManager.default.contentsOfDirectory(atPath: root)
        where !BPFFS.kernelFiles.contains(entry) && entry != BPFFS.mountedMarker {
            try removePins(root + "/" + entry)
        }
        _ = rmdir(root)
        logger.info("Removed pinned state", metadata: ["bpffs.root": "\(root)"])
    }
}

/// `masqd uninstall` run in another network namespace than the one masqd attached in.
public struct UninstallElsewhere: Error, CustomStringConvertible {
    /// The namespaces' inode numbers (`ls -l /proc/PID/ns/net` shows them as net:[N]).
    public var attachedIn: UInt64
    public var here: UInt64

    public var description: String {
        "masqd attached its programs in network namespace net:[\(attachedIn)], this is net:[\(here)]: run uninstall there (e.g. nsenter --net=/run/netns/NAME masqd uninstall), or add --force to remove the pins anyway; nothing was removed"
    }
}

/// Removes a pin, or a directory of pins, naming the path that could not be removed.
private func removePins(_ path: String) throws {
    var st = stat()
    guard lstat(path, &st) == 0 else { throw BPFError("remove pinned state", path, errno: errno) }
    if st.st_mode & S_IFMT == S_IFDIR {
        for entry in try FileManager.default.contentsOfDirectory(atPath: path) {
            try removePins(path + "/" + entry)
        }
        guard rmdir(path) == 0 else { throw BPFError("remove pinned state", path, errno: errno) }
    } else {
        guard unlink(path) == 0 else { throw BPFError("remove pinned state", path, errno: errno) }
    }
}

/// The key of an LPM map of one family (masq_lpm_v4, masq_lpm_v6).
protocol LPMKey {
    /// The key of `prefix`, a prefix of the key's family.
    init(_ prefix: IPPrefix)
    var prefix: IPPrefix { get }
}

/// Whether two values of a C struct (a map key or value) hold the same bytes: the imported
/// structs are not Equatable.
func bytesEqual<T: BitwiseCopyable>(_ a: T, _ b: T) -> Bool {
    withUnsafeBytes(of: a) { x in withUnsafeBytes(of: b) { y in x.elementsEqual(y) } }
}

extension IPv6Address {
    public init(_ key: masq_addr_v6) { self.init(bytes: withUnsafeBytes(of: key) { Array($0) }) }
}

extension masq_addr_v6 {
    public init(_ address: IPv6Address) {
        self.init()
        withUnsafeMutableBytes(of: &self) { $0.copyBytes(from: address.bytes) }
    }
}

extension IPPrefix {
    init(lpm: masq_lpm_v4) {
        self.init(unchecked: .v4(IPv4Address(networkOrder: lpm.addr)), length: Int(lpm.prefixlen))
    }

    init(lpm: masq_lpm_v6) {
        self.init(unchecked: .v6(IPv6Address(bytes: withUnsafeBytes(of: lpm.addr) { Array($0) })),
                  length: Int(lpm.prefixlen))
    }
}

extension masq_lpm_v4: LPMKey {
    /// The LPM key of an IPv4 prefix (callers pass IPv4 prefixes only).
    init(_ prefix: IPPrefix) {
        self.init()
        prefixlen = UInt32(prefix.length)
        if case .v4(let a) = prefix.address { addr = a.networkOrder }
    }

    var prefix: IPPrefix { IPPrefix(lpm: self) }
}

extension masq_lpm_v6: LPMKey {
    /// The LPM key of an IPv6 prefix (callers pass IPv6 prefixes only).
    init(_ prefix: IPPrefix) {
        self.init()
        prefixlen = UInt32(prefix.length)
        if case .v6(let a) = prefix.address { withUnsafeMutableBytes(of: &addr) { $0.copyBytes(from: a.bytes) } }
    }

    var prefix: IPPrefix { IPPrefix(lpm: self) }
}
