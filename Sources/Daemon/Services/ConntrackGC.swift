@preconcurrency import Glibc
import CLibbpf
import CMasq
import Dispatch
import Foundation
import Logging
import ServiceLifecycle

/// The NAT table's garbage collector: expires idle flows by `FlowLifetimes`, both entries of a
/// flow together, repairs or removes half pairs, and reports what it saw in `DaemonStatus`.
///
/// Each pass reads the whole table in batches (`BPF_MAP_LOOKUP_BATCH`) and deletes in batches
/// (`BPF_MAP_DELETE_BATCH`): every EGRESS entry first, then the INGRESS entries. That order
/// matters: an egress packet re-creates a missing INGRESS entry of a live EGRESS entry
/// (`snat_v4_restore_reverse`), so deleting INGRESS first could let a packet in between bring
/// it back and strand it once its EGRESS goes.
///
/// The interval adapts to the share of the table a pass deletes (`GCInterval`): many expired
/// flows, pass sooner; few, later, up to `conntrack-gc-interval`. Between passes the service
/// watches allocation pressure (`AllocationPressure`: the datapath's exhaustive scans and
/// failed allocations) once a second and runs at once when it rises, since expired flows may
/// hold the ports new flows are looking for.
struct ConntrackGC: Service {
    let datapath: Datapath
    let lifetimes: FlowLifetimes
    let maxInterval: Duration
    let status: DaemonStatus
    let logger: Logger

    /// How often pressure is checked between passes, and the shortest interval.
    static let tick = Duration.seconds(1)

    init(datapath: Datapath, lifetimes: FlowLifetimes, maxInterval: Duration, status: DaemonStatus, logger: Logger) {
        self.datapath = datapath
        self.lifetimes = lifetimes
        self.maxInterval = maxInterval
        self.status = status
        var logger = logger
        logger[metadataKey: "service"] = "conntrack-gc"
        self.logger = logger
    }

    func run() async throws {
        // Map fds stay valid while the Datapath (and its object) lives, which is the daemon's
        // life; the kernel serialises map operations, so the sweeper needs no actor hop.
        let sweeper = ConntrackSweeper(nat: try await datapath.map(MASQ_MAP_NAT_V4), lifetimes: lifetimes,
                                       fullMarks: try await datapath.map(MASQ_MAP_FULL_V4))
        var pressure = AllocationPressure(stats: try await datapath.map(MASQ_MAP_STATS))
        var interval = min(maxInterval, GCInterval.initial)
        let clock = ContinuousClock()
        logger.debug("Conntrack GC started", metadata: ["gc.max_interval": "\(maxInterval)"])

        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                let started = clock.now
                let report = try await sweeper.sweepOffPool()
                let took = clock.now - started
                interval = GCInterval.next(current: interval, deletedFraction: report.deletedFraction, max: maxInterval)
                status.update { $0.conntrackGC.record(report, nextInterval: interval, duration: took) }
                logger.debug("Conntrack GC pass", metadata: [
                    "gc.entries": "\(report.entries)", "gc.expired_flows": "\(report.expiredFlows)",
                    "gc.deleted": "\(report.deletedEntries)", "gc.repaired_halves": "\(report.repairedHalves)",
                    "gc.removed_halves": "\(report.removedHalves)", "gc.next_interval": "\(interval)",
                ])
            } catch {
                logger.error("Conntrack GC pass failed; retrying at the next interval", metadata: ["error": "\(error)"])
            }
            _ = pressure.risen() // this pass answers the pressure seen so far
            let deadline = clock.now + interval
            while clock.now < deadline {
                guard (try? await cancelOnGracefulShutdown({ try await Task.sleep(for: Self.tick) })) != nil else { return }
                if pressure.risen() {
                    status.update { $0.conntrackGC.pressureWakeups += 1 }
                    logger.debug("Allocation pressure: conntrack GC runs early")
                    break
                }
            }
        }
    }
}

/// What the GC reports for status and metrics.
public struct ConntrackGCState: Sendable {
    /// Passes run, and the last one's report.
    public var passes = 0
    public var last: ConntrackSweeper.Report?
    /// When the last pass ended, and how long it took.
    public var lastPassAt: Date?
    public var lastPassDuration: Duration?
    /// Totals over the daemon's life.
    public var expiredFlows = 0
    public var deletedEntries = 0
    /// Half pairs found: an entry whose partner was gone. The datapath always writes both
    /// halves and deletes both, so each is an LRU eviction (of one half) or a race with a
    /// flow being created or deleted; together with the datapath's MASQ_STAT_REVERSE_RESTORED
    /// (an INGRESS half re-created by a packet) they count the evictions the table shows.
    public var repairedHalves = 0
    public var removedHalves = 0
    /// Passes started early by allocation pressure.
    public var pressureWakeups = 0
    /// The interval before the next pass.
    public var interval: Duration = GCInterval.initial

    mutating func record(_ report: ConntrackSweeper.Report, nextInterval: Duration, duration: Duration? = nil,
                         at date: Date = .now) {
        passes += 1
        last = report
        lastPassAt = date
        lastPassDuration = duration
        expiredFlows += report.expiredFlows
        deletedEntries += report.deletedEntries
        repairedHalves += report.repairedHalves
        removedHalves += report.removedHalves
        interval = nextInterval
    }
}

/// The GC's interval policy: halve it when a pass deletes a quarter of the table or more,
/// grow it by half when it deletes 5% or less, always within [`minimum`, max].
enum GCInterval {
    static let initial = Duration.seconds(10)
    static let minimum = ConntrackGC.tick

    static func next(current: Duration, deletedFraction: Double, max: Duration) -> Duration {
        var next = current
        if deletedFraction >= 0.25 {
            next = current / 2
        } else if deletedFraction <= 0.05 {
            next = current * 1.5
        }
        return Swift.min(Swift.max(next, minimum), Swift.max(max, minimum))
    }
}

/// Allocation pressure as the datapath counts it: new flows that needed the exhaustive port
/// scan (their 32 random probes all hit used ports) or found no port at all. Either rising
/// means some (SNAT address, remote, remote port, protocol) is nearly full.
struct AllocationPressure {
    let stats: BPFMap
    private var last: UInt64?

    init(stats: BPFMap) {
        self.stats = stats
    }

    /// Whether scans or failures rose since the last call (false on the first).
    mutating func risen() -> Bool {
        guard let scans = try? stats.perCPUSum(UInt32(MASQ_STAT_ALLOC_SCANS)),
              let fails = try? stats.perCPUSum(UInt32(MASQ_STAT_ALLOC_FAIL)) else { return false }
        let now = scans &+ fails
        defer { last = now }
        return last.map { now > $0 } ?? false
    }
}

/// One GC pass over `masq_nat_v4`. Works on map fds only, so tests run it on their own maps.
public struct ConntrackSweeper: Sendable {
    let nat: BPFMap
    let lifetimes: FlowLifetimes
    /// masq_full_v4: the datapath's "this tuple was just found full" marks. A pass that frees
    /// ports of a tuple removes its mark, so the next new flow scans again and finds them.
    let fullMarks: BPFMap?
    /// Entries read per BPF_MAP_LOOKUP_BATCH call.
    var batchSize = 4096
    /// Tuples listed in a report's saturation, most used first.
    var saturationTop = 10

    /// What one pass saw and did.
    public struct Report: Sendable, Equatable {
        /// Entries in the table when read.
        public var entries = 0
        /// Flows expired (a pair, a lone half or an inbound entry each count once).
        public var expiredFlows = 0
        /// Entries deleted (both halves of a pair count).
        public var deletedEntries = 0
        /// Missing halves written back for live flows.
        public var repairedHalves = 0
        /// Lone halves of expired flows deleted.
        public var removedHalves = 0
        /// The (SNAT address, remote, remote port, protocol) tuples holding the most ports.
        public var saturation: [TupleUse] = []

        /// The share of the table this pass deleted, 0-1.
        public var deletedFraction: Double { entries == 0 ? 0 : Double(deletedEntries) / Double(entries) }
    }

    /// Ports in use for one (SNAT address, remote, remote port, protocol): INGRESS entries
    /// counted exactly during the pass.
    public struct TupleUse: Sendable, Equatable {
        public var key: masq_sat_key_v4
        public var ports: Int

        public static func == (a: Self, b: Self) -> Bool {
            a.ports == b.ports && NATKeyID(a.key) == NATKeyID(b.key)
        }
    }

    init(nat: BPFMap, lifetimes: FlowLifetimes, fullMarks: BPFMap? = nil) {
        self.nat = nat
        self.lifetimes = lifetimes
        self.fullMarks = fullMarks
    }

    /// One pass now, on a thread of its own: a pass over a large table takes a while of map
    /// syscalls and must not hold one of the few cooperative threads the API serves on.
    func sweepOffPool() async throws -> Report {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global(qos: .utility).async {
                continuation.resume(with: Result { try sweep(now: Self.bootTimeNow()) })
            }
        }
    }

    /// One pass at `now` (CLOCK_BOOTTIME ns).
    func sweep(now: UInt64) throws -> Report {
        var report = Report()
        var egress: [(masq_nat_key_v4, masq_nat_entry_v4)] = []
        var ingress: [NATKeyID: (key: masq_nat_key_v4, value: masq_nat_entry_v4)] = [:]
        var token: UInt32?
        repeat {
            let batch = try nat.lookupBatch(from: token, count: batchSize, key: masq_nat_key_v4.self,
                                            value: masq_nat_entry_v4.self)
            for (key, value) in batch.entries {
                if key.dir == UInt8(MASQ_DIR_EGRESS) {
                    egress.append((key, value))
                } else {
                    ingress[NATKeyID(key)] = (key, value)
                }
            }
            token = batch.next
        } while token != nil
        report.entries = egress.count + ingress.count

        var deleteEgress: [masq_nat_key_v4] = []
        var deleteIngress: [masq_nat_key_v4] = []
        var paired = Set<NATKeyID>()
        var uses: [NATKeyID: (key: masq_sat_key_v4, ports: Int)] = [:]

        for (key, value) in egress {
            let inbound = value.flags & UInt8(MASQ_NAT_F_INBOUND) != 0
            guard !inbound, let rkey = NATEntries.partner(key, value) else {
                // An inbound flow is one entry standing for both directions.
                if lifetimes.isExpired(proto: key.proto, seen: value.seen, lastSeen: value.last_seen, now: now) {
                    deleteEgress.append(key)
                    report.expiredFlows += 1
                }
                continue
            }
            let rid = NATKeyID(rkey)
            if let reply = ingress[rid], reply.value.to_addr == key.saddr, reply.value.to_port == key.sport {
                paired.insert(rid)
                let seen = value.seen | reply.value.seen
                let last = max(value.last_seen, reply.value.last_seen)
                if lifetimes.isExpired(proto: key.proto, seen: seen, lastSeen: last, now: now) {
                    deleteEgress.append(key)
                    deleteIngress.append(rkey)
                    report.expiredFlows += 1
                }
            } else if lifetimes.isExpired(proto: key.proto, seen: value.seen, lastSeen: value.last_seen, now: now) {
                // Its INGRESS half was evicted and the flow is idle: remove the rest.
                deleteEgress.append(key)
                report.expiredFlows += 1
                report.removedHalves += 1
            } else if ingress[rid] == nil, repair(rkey, Self.reverse(of: key, value)) {
                // A live flow lost its INGRESS half: replies would pass untranslated and its
                // port could go to another flow. The datapath restores it on the flow's next
                // egress packet; a flow that only receives needs the GC to.
                report.repairedHalves += 1
            }
        }
        for (rid, reply) in ingress where !paired.contains(rid) {
            if lifetimes.isExpired(proto: reply.key.proto, seen: reply.value.seen, lastSeen: reply.value.last_seen, now: now) {
                deleteIngress.append(reply.key)
                report.expiredFlows += 1
                report.removedHalves += 1
            } else if let fkey = NATEntries.partner(reply.key, reply.value),
                      repair(fkey, Self.forward(of: reply.key, reply.value)) {
                // A live flow lost its EGRESS half: without it the flow's next packet would be
                // a new flow, likely on another port, breaking the connection. (A half seen
                // while the datapath writes a new pair is repaired to the same values, which
                // the datapath then finds and uses.)
                report.repairedHalves += 1
            }
        }
        // Exact port use per tuple, from the INGRESS entries that remain.
        let deleted = Set(deleteIngress.map(NATKeyID.init))
        for (rid, reply) in ingress where !deleted.contains(rid) {
            let sat = Self.tupleKey(of: reply.key)
            uses[NATKeyID(sat), default: (sat, 0)].ports += 1
        }
        report.saturation = uses.values.sorted { $0.ports > $1.ports }.prefix(saturationTop)
            .map { TupleUse(key: $0.key, ports: $0.ports) }

        report.deletedEntries = try nat.deleteBatch(deleteEgress) + nat.deleteBatch(deleteIngress)
        if let fullMarks, !deleteIngress.isEmpty {
            let freed = Set(deleteIngress.map { NATKeyID(Self.tupleKey(of: $0)) })
            for mark in try fullMarks.keys(as: masq_sat_key_v4.self) where freed.contains(NATKeyID(mark)) {
                try fullMarks.delete(mark)
            }
        }
        return report
    }

    /// The (SNAT address, remote, remote port, protocol) an INGRESS key's port belongs to.
    static func tupleKey(of ingress: masq_nat_key_v4) -> masq_sat_key_v4 {
        masq_sat_key_v4(snat: ingress.daddr, remote: ingress.saddr, remote_port: ingress.sport,
                        proto: ingress.proto, pad: 0)
    }

    /// Writes a missing half unless its key exists (another flow holds that tuple: leave it).
    private func repair(_ key: masq_nat_key_v4, _ value: masq_nat_entry_v4) -> Bool {
        (try? nat.update(key, value, flags: UInt64(BPF_NOEXIST))) != nil
    }

    /// The INGRESS half of an EGRESS entry, as snat_v4_restore_reverse writes it.
    static func reverse(of key: masq_nat_key_v4, _ value: masq_nat_entry_v4) -> masq_nat_entry_v4 {
        var r = masq_nat_entry_v4()
        r.to_addr = key.saddr
        r.to_port = key.sport
        r.flags = value.flags
        r.ifindex = value.ifindex
        r.created = value.created
        r.last_seen = value.last_seen
        return r
    }

    /// The EGRESS half of an INGRESS entry: the flow leaves with the INGRESS key's address and
    /// port, the ones its replies arrive for.
    static func forward(of key: masq_nat_key_v4, _ value: masq_nat_entry_v4) -> masq_nat_entry_v4 {
        var f = masq_nat_entry_v4()
        f.to_addr = key.daddr
        f.to_port = key.dport
        f.flags = value.flags
        f.ifindex = value.ifindex
        f.created = value.created
        f.last_seen = value.last_seen
        f.seen = value.seen & ~UInt8(MASQ_SEEN_REPLY)
        return f
    }

    /// CLOCK_BOOTTIME in ns, the clock of the entries' timestamps.
    static func bootTimeNow() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_BOOTTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

/// A map key's bytes as a hashable value (the C structs are not Hashable).
struct NATKeyID: Hashable {
    let low: UInt64
    let high: UInt64

    init(_ key: masq_nat_key_v4) {
        (low, high) = withUnsafeBytes(of: key) { ($0.loadUnaligned(as: UInt64.self), $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
    }

    init(_ key: masq_sat_key_v4) {
        (low, high) = withUnsafeBytes(of: key) {
            ($0.loadUnaligned(as: UInt64.self), UInt64($0.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
        }
    }
}

extension masq_sat_key_v4: @unchecked @retroactive Sendable {}

extension BPFMap {
    /// Deletes `keys` with BPF_MAP_DELETE_BATCH; returns how many were deleted. The kernel stops
    /// at the first key that is gone (deleted meanwhile by the datapath or a flush): that key
    /// is skipped and the batch goes on after it.
    func deleteBatch<K: BitwiseCopyable>(_ keys: [K]) throws -> Int {
        var deleted = 0
        var start = 0
        while start < keys.count {
            var count = UInt32(keys.count - start)
            let err = keys.withUnsafeBufferPointer { buf in
                bpf_map_delete_batch(fd, buf.baseAddress! + start, &count, nil)
            }
            let code = err == 0 ? 0 : errno
            deleted += Int(count)
            if code == 0 { break }
            guard code == ENOENT else { throw BPFError("batch delete", "map \(name)", errno: code) }
            start += Int(count) + 1
        }
        return deleted
    }
}
