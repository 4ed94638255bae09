@preconcurrency import Glibc
import Blocking
import CLibbpf
import CMasq
import Datapath
import Foundation
import Logging
import NetworkTypes
import ServiceLifecycle

/// The NAT table's garbage collector: expires idle flows by `FlowLifetimes`, both entries of a
/// flow together, removes lone halves, and reports what it saw in `DaemonStatus`. The table is
/// a hash that never evicts, so this is what makes room for new flows.
///
/// Each pass reads the table in batches (`BPF_MAP_LOOKUP_BATCH`) and deletes in batches
/// (`BPF_MAP_DELETE_BATCH`): a batch's EGRESS entries first, then its INGRESS entries. That
/// order matters: an egress packet re-creates a missing INGRESS entry of a live EGRESS entry
/// (`snat_v4_restore_reverse`), so deleting INGRESS first could let a packet in between bring
/// it back and strand it once its EGRESS goes.
///
/// The interval adapts to the share of the table a pass deletes (`GCInterval`): many expired
/// flows, pass sooner; few, later, up to `conntrack-gc-interval`. Between passes the service
/// watches allocation pressure (`AllocationPressure`: the datapath's exhaustive scans, failed
/// allocations and new flows a full table refused) once a second and runs at once when it
/// rises, since expired flows may hold the ports and the room new flows are looking for.
struct ConntrackGC: Service {
    let datapath: Datapath
    let lifetimes: FlowLifetimes
    let maxInterval: Duration
    let status: DaemonStatus
    /// Where expired and repaired flows are reported while anyone listens.
    let events: EventHub?
    let logger: Logger

    /// How often pressure is checked between passes, and the shortest interval.
    static let tick = Duration.seconds(1)

    init(datapath: Datapath, lifetimes: FlowLifetimes, maxInterval: Duration, status: DaemonStatus,
         events: EventHub? = nil, logger: Logger) {
        self.datapath = datapath
        self.events = events
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
        var sweepers: [ConntrackSweeper] = []
        for (nat, full) in [(MASQ_MAP_NAT_V4, MASQ_MAP_FULL_V4), (MASQ_MAP_NAT_V6, MASQ_MAP_FULL_V6)] {
            sweepers.append(ConntrackSweeper(nat: try await datapath.map(nat), lifetimes: lifetimes,
                                             fullMarks: try await datapath.map(full), events: events))
        }
        var pressure = AllocationPressure(stats: try await datapath.map(MASQ_MAP_STATS))
        var interval = min(maxInterval, GCInterval.initial)
        let clock = ContinuousClock()
        logger.debug("Conntrack GC started", metadata: ["gc.max_interval": "\(maxInterval)"])

        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                let started = clock.now
                var report = ConntrackSweeper.Report(summaries: [])
                for sweeper in sweepers { report.add(try await sweeper.sweepOffPool()) }
                let took = clock.now - started
                interval = GCInterval.next(current: interval, deletedFraction: report.deletedFraction, max: maxInterval)
                status.update { $0.recordGCPass(report, nextInterval: interval, duration: took) }
                logger.debug("Conntrack GC pass", metadata: [
                    "gc.entries": "\(report.entries)", "gc.expired_flows": "\(report.expiredFlows)",
                    "gc.deleted": "\(report.deletedEntries)", "gc.removed_halves": "\(report.removedHalves)", "gc.next_interval": "\(interval)",
                ])
            } catch {
                logger.error("Conntrack GC pass failed; retrying at the next interval", metadata: ["error": "\(error)"])
            }
            _ = pressure.risen() // this pass answers the pressure seen so far
            let deadline = clock.now + interval
            while clock.now < deadline {
                guard (try? await cancelWhenGracefulShutdown({ try await Task.sleep(for: Self.tick) })) != nil else { return }
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
    /// Lone halves of expired flows: an entry whose partner was gone. The datapath always
    /// writes both halves and deletes both, so each is a flush or a race with a flow being
    /// created or deleted.
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
        removedHalves += report.removedHalves
        interval = nextInterval
    }
}

extension DaemonStatus.Snapshot {
    /// Records a GC pass: its figures, and the NAT table summary it counted, which status and
    /// /metrics serve until the next pass.
    public mutating func recordGCPass(_ report: ConntrackSweeper.Report, nextInterval: Duration, duration: Duration? = nil,
                                      at date: Date = .now) {
        conntrackGC.record(report, nextInterval: nextInterval, duration: duration, at: date)
        natSummary = NATSummary(tables: report.summaries, asOf: date)
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
/// scan (their 32 probes all hit used ports), found no port at all, or found the table full.
/// The first two rising mean some (SNAT address, remote, remote port, protocol) is nearly
/// full, the last that the table is.
struct AllocationPressure {
    let stats: BPFMap
    private var last: UInt64?

    init(stats: BPFMap) {
        self.stats = stats
    }

    /// Whether scans, failures or refusals rose since the last call (false on the first).
    mutating func risen() -> Bool {
        guard let scans = try? stats.perCPUSum(MASQ_STAT_ALLOC_SCANS.rawValue),
              let fails = try? stats.perCPUSum(MASQ_STAT_ALLOC_FAIL.rawValue),
              let full = try? stats.perCPUSum(MASQ_STAT_TABLE_FULL.rawValue) else { return false }
        let now = scans &+ fails &+ full
        defer { last = now }
        return last.map { now > $0 } ?? false
    }
}

/// One GC pass over `masq_nat_v4`. Works on map fds only, so tests run it on their own maps.
///
/// A pass walks the table in batches and keeps only the batch at hand and a bounded tally of
/// port use: its memory does not grow with the table. Each entry gets a `Verdict`; an expired
/// pair is deleted by the first of its entries the walk reads (one partner lookup a flow),
/// both halves at once, a lone half by itself. Each batch's expired entries are deleted before
/// the next batch is read, EGRESS first.
public struct ConntrackSweeper: Sendable {
    let nat: BPFMap
    let lifetimes: FlowLifetimes
    /// masq_full_v4: the datapath's "this tuple was just found full" marks. A pass that frees
    /// ports removes the marks, so the next new flow of a tuple scans again and finds them.
    let fullMarks: BPFMap?
    /// Where the flows a pass removes are reported, while it has subscribers.
    let events: EventHub?
    /// Entries read per BPF_MAP_LOOKUP_BATCH call.
    var batchSize = 4096
    /// How a pass waits for event subscribers to take its expiries (`EventHub.publishPaced`).
    var eventPacing = EventHub.Pacing()
    /// Tuples listed in a report's saturation, most used first.
    var saturationTop = 10
    /// Distinct (SNAT address, remote, remote port, protocol) tuples a pass counts exactly;
    /// beyond that the tally is Misra-Gries' (`PortUseTally`), which bounds its memory.
    var tallyCapacity = 16_384

    /// What one pass saw and did.
    public struct Report: Sendable, Equatable {
        /// Entries in the table when read.
        public var entries = 0
        /// Flows expired (a pair, a lone half or an inbound entry each count once).
        public var expiredFlows = 0
        /// Entries deleted (both halves of a pair count).
        public var deletedEntries = 0
        /// Lone halves of expired flows deleted.
        public var removedHalves = 0
        /// The (SNAT address, remote, remote port, protocol) tuples holding the most ports
        /// (the INGRESS entries left after the pass), most first.
        public var saturation: [TupleUse] = []
        /// The source holding the most ports towards one remote port (`PortHolder`).
        public var busiestHolder: PortHolder?
        /// The entries and flows the pass left in each table it swept (one a family).
        public var summaries: [NATTableSummary]

        public init(summaries: [NATTableSummary] = [NATTableSummary(family: .ipv4, map: MASQ_MAP_NAT_V4)]) {
            self.summaries = summaries
        }

        /// The share of the table this pass deleted, 0-1.
        public var deletedFraction: Double { entries == 0 ? 0 : Double(deletedEntries) / Double(entries) }

        /// Adds another table's pass (the other family's) to this one.
        public mutating func add(_ other: Report) {
            entries += other.entries
            expiredFlows += other.expiredFlows
            deletedEntries += other.deletedEntries
            removedHalves += other.removedHalves
            saturation = Array((saturation + other.saturation).sorted { $0.ports > $1.ports }.prefix(max(saturation.count, other.saturation.count)))
            busiestHolder = [busiestHolder, other.busiestHolder].compactMap { $0 }.max { $0.ports < $1.ports }
            summaries += other.summaries
        }
    }

    init(nat: BPFMap, lifetimes: FlowLifetimes, fullMarks: BPFMap? = nil, events: EventHub? = nil) {
        self.nat = nat
        self.lifetimes = lifetimes
        self.fullMarks = fullMarks
        self.events = events
    }

    /// One pass now, on the blocking pool: a pass over a large table takes a while of map
    /// syscalls and must not hold one of the few cooperative threads the API serves on.
    func sweepOffPool() async throws -> Report {
        try await BlockingPool.shared.run { try sweep(now: NATEntries.bootTimeNow()) }
    }

    /// One pass at `now` (CLOCK_BOOTTIME ns), over the table's family (by its map's name).
    func sweep(now: UInt64) throws -> Report {
        nat.name == MASQ_MAP_NAT_V6 ? try sweep(now: now, masq_nat_key_v6.self) : try sweep(now: now, masq_nat_key_v4.self)
    }

    private func sweep<Key: NATKey & BitwiseCopyable>(now: UInt64, _: Key.Type) throws -> Report
        where Key.Value: BitwiseCopyable, Key.Tuple: BitwiseCopyable
    {
        var report = Report(summaries: [NATTableSummary(family: Key.family, map: nat.name)])
        var tally = PortUseTally<Key.Tuple>(capacity: tallyCapacity)
        var holders = PortHolderTally<Key>(capacity: tallyCapacity)
        var deleteEgress: [Key] = [], deleteIngress: [Key] = []
        // Partners this batch deletes that it may still hold unread (bounded by the batch).
        var partnersDeleted = Set<NATKeyID>()
        var removed: [NATEvent] = []
        var pacing = eventPacing
        try nat.forEachBatch(count: batchSize, key: Key.self, value: Key.Value.self) { keys, values in
            deleteEgress.removeAll(keepingCapacity: true)
            deleteIngress.removeAll(keepingCapacity: true)
            partnersDeleted.removeAll(keepingCapacity: true)
            removed.removeAll(keepingCapacity: true)
            let reporting = events?.hasSubscribers ?? false
            for (key, value) in zip(keys, values) where !partnersDeleted.contains(NATKeyID(key)) {
                report.entries += 1
                let egress = key.dir == UInt8(MASQ_DIR_EGRESS)
                switch try verdict(key, value, now: now) {
                case .live:
                    if egress { holders.add(key, value) } else { tally.add(key.tuple) }
                    report.summaries[0].add(key, value)
                case .expiredPair:
                    // Decided once, by whichever entry the walk reads first: both entries of an
                    // expired pair are idle, so that one finds it, and the other is never read.
                    guard let pkey = NATEntries.partner(key, value) else { continue }
                    deleteEgress.append(egress ? key : pkey)
                    deleteIngress.append(egress ? pkey : key)
                    partnersDeleted.insert(NATKeyID(pkey))
                    report.entries += 1
                    report.expiredFlows += 1
                    if reporting {
                        let seen = value.ct.seen | ((try nat.lookup(pkey, as: Key.Value.self))?.ct.seen ?? 0)
                        let state = FlowLifetimes.state(proto: L4Protocol(number: key.proto), tcpState: value.ct.tcp_state, seen: seen)
                        removed.append(NATEvent(.expired(state), key: key, value: value, time: now))
                    }
                case .expiredAlone:
                    if egress { deleteEgress.append(key) } else { deleteIngress.append(key) }
                    report.expiredFlows += 1
                    let lone = NATEntries.partner(key, value) != nil
                    if lone { report.removedHalves += 1 }
                    if reporting {
                        let state = FlowLifetimes.state(proto: L4Protocol(number: key.proto), tcpState: value.ct.tcp_state, seen: value.ct.seen)
                        removed.append(NATEvent(lone ? .repaired : .expired(state), key: key, value: value, time: now))
                    }
                }
            }
            report.deletedEntries += try nat.deleteBatch(deleteEgress) + nat.deleteBatch(deleteIngress)
            events?.publishPaced(removed, pacing: &pacing)
            return true
        }

        report.saturation = tally.top(saturationTop).map { Key.use(of: $0.key, ports: $0.count) }
        report.busiestHolder = holders.top(1).first
        if let fullMarks, report.deletedEntries > 0 {
            // Ports came free: every tuple may scan again (a mark is only a 100 ms hint).
            for mark in try fullMarks.keys(as: Key.Tuple.self) {
                try fullMarks.delete(mark)
            }
        }
        return report
    }

    /// What a pass does with one entry.
    enum Verdict {
        /// Its flow lives (its INGRESS entry holds a port).
        case live
        /// Both entries of its pair are idle for the flow's lifetime.
        case expiredPair
        /// It stands alone (an inbound flow, or a half whose partner is gone or another
        /// flow's) and is idle.
        case expiredAlone
    }

    /// The verdict on one entry. An entry idle for the shortest lifetime its flow could have
    /// is a candidate; only then is its partner looked up, since the flow lives as long as its
    /// later entry, by the state and seen bits of both.
    func verdict<Key: NATKey & BitwiseCopyable>(_ key: Key, _ value: Key.Value, now: UInt64) throws -> Verdict
        where Key.Value: BitwiseCopyable
    {
        let ct = value.ct
        guard now > ct.last_seen,
              now - ct.last_seen > lifetimes.shortestLifetimeNanoseconds(proto: key.proto, tcpState: ct.tcp_state)
        else { return .live }
        guard let pkey = NATEntries.partner(key, value),
              let partner = try nat.lookup(pkey, as: Key.Value.self), Self.mapsBack(key, to: partner)
        else {
            return isExpired(key, ct, lastSeen: ct.last_seen, seen: ct.seen, now: now) ? .expiredAlone : .live
        }
        let egress = key.dir == UInt8(MASQ_DIR_EGRESS)
        let (fwd, rev) = egress ? (ct, partner.ct) : (partner.ct, ct)
        return isExpired(key, fwd, lastSeen: max(fwd.last_seen, rev.last_seen), seen: fwd.seen | rev.seen,
                         now: now) ? .expiredPair : .live
    }

    private func isExpired<Key: NATKey>(_ key: Key, _ ct: masq_nat_entry_v4, lastSeen: UInt64, seen: UInt8,
                                        now: UInt64) -> Bool {
        lifetimes.isExpired(proto: key.proto, tcpState: ct.tcp_state, seen: seen, lastSeen: lastSeen, now: now)
    }

    /// Whether `partner` (the entry under `key`'s partner key) maps back to `key`'s flow.
    static func mapsBack<Key: NATKey>(_ key: Key, to partner: Key.Value) -> Bool {
        if key.dir == UInt8(MASQ_DIR_EGRESS) {
            return partner.to == key.saddr && partner.ct.to_port == key.sport
        }
        return partner.ct.flags & UInt8(MASQ_NAT_F_INBOUND) == 0 && partner.to == key.daddr
            && partner.ct.to_port == key.dport
    }
}

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
