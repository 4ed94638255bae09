@preconcurrency import Glibc
import API
import Blocking
import CMasq
import Daemon
import Datapath
import Foundation
import NIOCore
import Netlink

/// The endpoints' logic: each reads what it reports from the datapath (the maps, read back) or
/// from the daemon's status, and returns an API value or throws an `APIError`.
struct APIHandlers: Sendable {
    let datapath: Datapath
    let status: DaemonStatus
    /// The config masqd started with; `currentConfig` follows SIGHUP reloads.
    let config: DaemonConfig
    let lifetimes: FlowLifetimes
    /// Flow events for `GET /v1/events`; flushes report their deletions to it.
    var events = EventHub()
    /// Table entries read per batch when scanning the NAT table.
    var batchSize = 1024
    /// The socket systemd passed (socket activation), which the API serves instead of
    /// `socket-path`; the config shows it as the socket in effect.
    var activatedSocketPath: String?
    /// Status and /metrics answers shared by the requests that ask at the same time.
    let sharedStatus = SharedRead<APIResponse>()
    let sharedMetrics = SharedRead<APIResponse>()

    /// The config in force: as last reloaded (restart-only keys keep their running values).
    var currentConfig: DaemonConfig { status.snapshot.config ?? config }

    // MARK: health and status

    func healthz() -> (HealthResponse, status: Int) {
        let health = Health.judge(status.snapshot)
        return (health, Health.httpStatus(health))
    }

    func statusResponse() async throws -> StatusResponse {
        let snapshot = status.snapshot
        let config = currentConfig
        let view = try await datapath.readView()
        let devices = view.devices.map { ifindex, device in
            let applied = snapshot.applied?.devices.first { $0.ifindex == ifindex }
            let missing = applied.flatMap { snapshot.applied?.missingSNATAddress($0) }
            return StatusResponse.Device(name: RouteLookup.name(of: ifindex) ?? "if\(ifindex)", ifindex: ifindex,
                                         kind: applied?.linkLayer.kind,
                                         snatIPv4: device.snatV4.map(IPAddress.v4), snatIPv6: device.snatV6.map(IPAddress.v6),
                                         snatIPv4Missing: missing?.ipv4, snatIPv6Missing: missing?.ipv6)
        }.sorted { $0.name < $1.name }
        // Exclusion 1: the native-routing CIDR, else the pod CIDRs; none for a family that is
        // not masqueraded (Cilium leaves it out too).
        func exclusion(_ enabled: Bool, _ native: IPPrefix?, _ pods: [IPPrefix]) -> String? {
            guard enabled else { return nil }
            return native?.description ?? (pods.isEmpty ? nil : pods.map(\.description).joined(separator: ","))
        }
        let masquerading = StatusResponse.Masquerading(
            enabled: view.ipv4Enabled || view.ipv6Enabled, ipMasqAgent: config.enableIPMasqAgent,
            devices: devices.map(\.name),
            enabledProtocols: .init(ipv4: view.ipv4Enabled, ipv6: view.ipv6Enabled),
            snatExclusionCIDRv4: exclusion(view.ipv4Enabled, view.nativeRoutingV4, view.podCIDRsV4),
            snatExclusionCIDRv6: exclusion(view.ipv6Enabled, view.nativeRoutingV6, view.podCIDRsV6))
        let drops = try await datapath.drops().map {
            StatusResponse.Drop(reason: $0.reason.label, code: Int($0.reason.code), summary: $0.reason.summary, count: $0.count)
        }
        let tables = try await datapath.tableFill(nat: natSummary())
        let stats = try await datapath.stats()
        let now = Date()
        return StatusResponse(
            version: masqVersion, startedAt: snapshot.startedAt,
            uptimeSeconds: now.timeIntervalSince(snapshot.startedAt), health: Health.judge(snapshot, now: now),
            ready: snapshot.ready, attachMode: snapshot.attachKind?.rawValue,
            masquerading: masquerading, devices: devices,
            skippedDevices: (snapshot.applied?.skippedDevices ?? [:]).sorted { $0.key < $1.key }
                .map { StatusResponse.SkippedDevice(name: $0.key, reason: $0.value) },
            reconcile: .init(generation: snapshot.applyCount, lastAppliedAt: snapshot.appliedAt,
                             lastError: snapshot.lastApplyError, failingSince: snapshot.failingSince,
                             consecutiveFailures: snapshot.consecutiveFailures),
            ipMasqAgent: .init(enabled: config.enableIPMasqAgent, path: config.ipMasqAgentConfigPath,
                               generation: snapshot.ipMasqAgent.generation, lastLoadAt: snapshot.ipMasqAgent.lastLoadAt,
                               lastError: snapshot.ipMasqAgent.lastError),
            configReloads: StatusFigures.configReloads(snapshot.configReloads),
            tables: tables.map { StatusResponse.Table($0, now: now) }, drops: drops,
            counters: StatusResponse.Counters(stats: stats), countersByFamily: StatusResponse.CountersByFamily(stats: stats),
            allocation: StatusFigures.allocation(histogram: try await datapath.allocationHistogram(),
                                                 saturation: try await datapath.portSaturation(top: saturationTop)),
            conntrackGC: StatusFigures.conntrackGC(snapshot.conntrackGC, rangeSize: view.portRange.count))
    }

    func ipmasq() async throws -> IPMasqResponse {
        IPMasqResponse(cidrs: try await datapath.nonMasqueradeCIDRs())
    }

    func configResponse() -> ConfigResponse {
        var c = currentConfig
        if let path = activatedSocketPath { c.socketPath = path }
        let agent = status.snapshot.ipMasqAgent
        return ConfigResponse(
            daemon: .init(values: c.shownValues),
            ipMasqAgent: .init(
                enabled: c.enableIPMasqAgent, configPath: c.ipMasqAgentConfigPath, generation: agent.generation,
                lastError: agent.lastError,
                nonMasqueradeCIDRs: c.enableIPMasqAgent ? agent.cidrs : []))
    }

    // MARK: conntrack

    /// One JSON page of flows.
    func conntrackPage(filter: ConntrackFilter, paging: ConntrackPaging) async throws -> ConntrackPage {
        let limit = paging.limit ?? ConntrackPaging.defaultPageSize
        guard limit <= ConntrackPaging.maxPageSize else {
            throw APIError.badRequest("limit: at most \(ConntrackPaging.maxPageSize) entries a JSON page; send Accept: application/x-ndjson to stream more")
        }
        let reader = try await datapath.natFlowReader()
        let tupleFilter = filter.flowTupleFilter, families = filter.natFamilies
        var entries: [ConntrackEntry] = []
        var names = DeviceNames()
        var next: ConntrackCursor? = try paging.cursor.map { cursor throws(APIError) in try ConntrackCursor(cursor) } ?? .start
        while let cursor = next, entries.count < limit {
            let room = limit - entries.count
            // A batch of at most `room` table entries holds at most `room` flows, so the page
            // ends where a batch does and its cursor is a bucket token: flows deleted meanwhile
            // cannot shift it (a cursor inside a batch counts entries, and would skip flows
            // after deletions). Only a bucket larger than the batch still cuts one.
            let batch = try await BlockingPool.shared.run { [batchSize] in
                try reader.flows(from: cursor, count: min(batchSize, room), families: families, filter: tupleFilter)
            }
            let now = NATEntries.bootTimeNow()
            for flow in batch.flows.prefix(room) {
                entries.append(NATEntries.entry(flow, now: now, lifetimes: lifetimes, deviceName: names[flow.egress.ifindex]))
            }
            next = batch.flows.count > room ? batch.flows[room - 1].after : batch.next
        }
        return ConntrackPage(entries: entries, nextCursor: next?.text)
    }

    /// Table entries a stream reads per batch: its output (about 140 bytes a table entry) is
    /// what the stream holds, twice (one batch written while the next is read).
    static let streamBatchSize = 4096

    /// Streams the flows as NDJSON, one batch of the table at a time: each batch is read and
    /// encoded on a thread of its own while the previous one is written, and each write waits
    /// until the client has taken enough of the previous ones (the channel's writability), so
    /// memory stays bounded by about two batches whatever the table's size and the client's pace.
    func conntrackStream(filter: ConntrackFilter, paging: ConntrackPaging, to writer: ResponseBodyWriter) async throws {
        let reader = try await datapath.natFlowReader()
        let tupleFilter = filter.flowTupleFilter, families = filter.natFamilies
        let start: ConntrackCursor = try paging.cursor.map { cursor throws(APIError) in try ConntrackCursor(cursor) } ?? .start
        var remaining = paging.limit ?? Int.max
        guard remaining > 0 else { return }
        var pending: Task<StreamChunk, Error>? = Task { [remaining] in
            try await streamChunk(reader, from: start, limit: remaining, families: families, filter: tupleFilter)
        }
        defer { pending?.cancel() }
        while let current = pending {
            let chunk = try await current.value
            remaining -= chunk.flows
            pending = remaining > 0 ? chunk.next.map { next in
                Task { [remaining] in
                    try await streamChunk(reader, from: next, limit: remaining, families: families, filter: tupleFilter)
                }
            } : nil
            if chunk.lines.readableBytes > 0 { try await writer.write(chunk.lines) }
        }
    }

    /// One batch of a stream: its flows' NDJSON lines and where the next batch starts.
    struct StreamChunk: Sendable {
        var lines: ByteBuffer
        var flows: Int
        var next: ConntrackCursor?
    }

    /// Reads and encodes one batch of at most `limit` flows from `position`, on a thread of its own.
    private func streamChunk(_ reader: NATFlowReader, from position: ConntrackCursor, limit: Int,
                             families: Set<NATFamily>, filter: FlowTupleFilter?) async throws -> StreamChunk {
        let lifetimes = self.lifetimes
        return try await BlockingPool.shared.run {
            var out = ByteBufferAllocator().buffer(capacity: Self.streamBatchSize * 160)
            var encoder = ConntrackNDJSON()
            var names = DeviceNames()
            var flows = 0
            let now = NATEntries.bootTimeNow()
            let next = try reader.forEachFlow(from: position, count: Self.streamBatchSize, families: families, filter: filter) { flow in
                encoder.write(NATEntries.entry(flow, now: now, lifetimes: lifetimes, deviceName: names[flow.egress.ifindex]),
                              to: &out)
                flows += 1
                return flows < limit
            }
            return StreamChunk(lines: out, flows: flows, next: next)
        }
    }

    /// Deletes the matching flows of each table that can hold them, both entries of each pair.
    func conntrackFlush(filter: ConntrackFilter) async throws -> ConntrackDeleteResponse {
        var deleted = 0
        for family in NATFamily.allCases where filter.natFamilies.contains(family) {
            var token: UInt32? = nil
            repeat {
                let started = Date()
                let batch = try await datapath.natDelete(family, from: token, count: batchSize * 4, filter: filter.flowTupleFilter,
                                                         reporting: events.hasSubscribers)
                deleted += batch.deleted
                status.update { $0.natSummary?.subtract(batch.removed, deletionStart: started) }
                events.publish(batch.events)
                token = batch.next
            } while token != nil
        }
        return ConntrackDeleteResponse(deleted: deleted)
    }

    // MARK: ports

    /// Who holds the SNAT ports: one walk of both NAT tables, on a thread of its own.
    func ports(_ query: PortsQuery) async throws -> PortsResponse {
        let range = try await datapath.readView().portRange
        let reader = try await datapath.portAccountReader()
        let filter = query.filter.flowTupleFilter
        let accounting = try await BlockingPool.shared.run { try reader.account(top: query.top, filter: filter) }
        let size = Double(range.count)
        return PortsResponse(
            portRange: .init(min: range.lowerBound, max: range.upperBound), flows: accounting.flows,
            exact: accounting.exact,
            holders: accounting.holders.map {
                PortsResponse.Holder(family: $0.src.family, proto: L4Protocol(number: $0.proto), src: $0.src, dst: $0.dst,
                                     dport: $0.dport, ports: $0.ports, rangeShare: Double($0.ports) / size)
            })
    }

    // MARK: explain

    func explain(_ query: ExplainQuery) async throws -> ExplainResponse {
        let device: MasqueradeDecision.EgressDevice?
        if let name = query.device {
            let ifindex = if_nametoindex(name)
            guard ifindex != 0 else { throw APIError.badRequest("device: no device '\(name)' in masqd's network namespace") }
            device = .init(name: name, ifindex: ifindex)
        } else {
            device = RouteLookup.outputInterface(for: query.dst, from: query.src).map {
                .init(name: RouteLookup.name(of: $0) ?? "if\($0)", ifindex: $0)
            }
        }
        let view = try await datapath.readView()
        // The EGRESS entry of the packet's tuple (ICMP echo: the id as sport, dport 0).
        let sport = query.sport.bigEndian
        let dport = [.icmp, .icmpv6].contains(query.proto) ? 0 : query.dport.bigEndian
        var existing: MasqueradeDecision.ExistingFlow?
        func flow(_ ct: masq_nat_entry_v4, to address: IPAddress) -> MasqueradeDecision.ExistingFlow {
            .init(inbound: ct.flags & UInt8(MASQ_NAT_F_INBOUND) != 0, host: ct.flags & UInt8(MASQ_NAT_F_HOST) != 0,
                  toAddress: address, toPort: UInt16(bigEndian: ct.to_port))
        }
        switch (query.src, query.dst, query.proto.number) {
        case (.v4(let src), .v4(let dst), let number?):
            let key = masq_nat_key_v4(saddr: src.networkOrder, daddr: dst.networkOrder, sport: sport, dport: dport,
                                      proto: number, dir: UInt8(MASQ_DIR_EGRESS), pad: 0)
            if let entry = try await datapath.natLookup([key]).first ?? nil {
                existing = flow(entry, to: .v4(IPv4Address(networkOrder: entry.to_addr)))
            }
        case (.v6(let src), .v6(let dst), let number?):
            let key = masq_nat_key_v6(saddr: masq_addr_v6(src), daddr: masq_addr_v6(dst), sport: sport, dport: dport,
                                      proto: number, dir: UInt8(MASQ_DIR_EGRESS), pad: 0)
            if let entry = try await datapath.natLookup([key]).first ?? nil {
                existing = flow(entry.ct, to: .v6(IPv6Address(entry.to_addr)))
            }
        default:
            break
        }
        return MasqueradeDecision.explain(query, device: device, view: view, existing: existing)
    }

    // MARK: metrics

    func metrics() async throws -> String {
        let snapshot = status.snapshot
        var out = PrometheusText()
        out.single("masq_up", .gauge,
                   help: "Whether masqd does its job (1: healthz answers 200, Ok or Warning; 0: Failure, the reason in /v1/healthz).",
                   Health.httpStatus(Health.judge(snapshot)) == 200 ? 1 : 0)
        out.family("masq_build_info", .info, help: "The masq version of this daemon.", [(["version": masqVersion], 1)])
        out.single("masq_uptime_seconds", .gauge, help: "Seconds since masqd started.",
                   Date().timeIntervalSince(snapshot.startedAt))

        let summary = try await natSummary()
        var flowSamples: [(labels: KeyValuePairs<String, String>, value: Double)] = []
        for table in summary.tables {
            for proto in [L4Protocol.tcp, .udp, table.family == .ipv6 ? .icmpv6 : .icmp] {
                for kind in NATFlowKind.allCases {
                    let flows = table.flows[.init(proto: proto.number ?? 0, kind: kind)] ?? 0
                    flowSamples.append((["family": table.family.rawValue, "proto": proto.rawValue, "kind": kind.rawValue],
                                        Double(flows)))
                }
            }
        }
        out.family("masq_nat_flows", .gauge,
                   help: "Tracked flows in the NAT table, by family, protocol and kind, as the last conntrack GC pass counted them, less those deleted through the API since (see masq_nat_count_age_seconds).",
                   flowSamples)
        out.family("masq_nat_count_age_seconds", .gauge,
                   help: "Age of the NAT table figures (masq_nat_flows, masq_map_entries of the NAT tables): they are counted by the conntrack GC's passes, not per scrape.",
                   summary.tables.map { (["family": $0.family.rawValue], Date().timeIntervalSince(summary.asOf)) })

        let tables = try await datapath.tableFill(nat: summary)
        out.family("masq_map_entries", .gauge, help: "Entries in each datapath map (the NAT tables as the last conntrack GC pass counted them, less those deleted through the API since).",
                   tables.map { (["map": $0.name], Double($0.entries)) })
        out.family("masq_map_max_entries", .gauge, help: "Capacity of each datapath map.",
                   tables.map { (["map": $0.name], Double($0.maxEntries)) })

        // Every masq_stats counter under its stable name (DatapathStat), a series per family
        // (family-less ones: one series).
        for value in try await datapath.stats() {
            if value.stat.perFamily {
                out.family(value.stat.metricName, .counter, help: value.stat.help,
                           NATFamily.allCases.map { (["family": $0.rawValue], Double(value[$0])) })
            } else {
                out.single(value.stat.metricName, .counter, help: value.stat.help, Double(value.ipv4))
            }
        }
        out.family("masq_drops_total", .counter, help: "Packets dropped by the datapath, by reason (every known reason, zeros included).",
                   try await datapath.drops().map { (["reason": $0.reason.label], Double($0.count)) })
        out.allocationHistogram(try await datapath.allocationHistogram())
        let rangeSize = try await datapath.readView().portRange.count
        out.tupleSaturation(try await datapath.portSaturation(top: 1), gc: snapshot.conntrackGC,
                            rangeSize: rangeSize)
        out.conntrackGC(snapshot.conntrackGC)
        out.single("masq_event_subscribers", .gauge, help: "Open GET /v1/events streams.", Double(events.subscribers))
        out.single("masq_event_subscriber_lost_total", .counter,
                   help: "Events GET /v1/events subscribers lost because they read slower than events came (each stream is told).",
                   Double(events.lost))

        out.single("masq_reconciles_total", .counter, help: "Times the desired state was applied to the datapath.",
                   Double(snapshot.applyCount))
        out.single("masq_reconcile_failing", .gauge, help: "Whether the last reconcile failed (1) or not (0).",
                   snapshot.lastApplyError == nil ? 0 : 1)
        out.single("masq_reconcile_consecutive_failures", .gauge, help: "Reconciles failed in a row (0 once one succeeds).",
                   Double(snapshot.consecutiveFailures))
        out.single("masq_devices", .gauge, help: "Masquerading devices in force (the programs run on them).",
                   Double(snapshot.applied?.devices.count ?? 0))
        out.configReloads(snapshot.configReloads)
        out.single("masq_ip_masq_agent_generation", .gauge,
                   help: "Distinct valid ip-masq-agent lists loaded (the config generation in status).",
                   Double(snapshot.ipMasqAgent.generation))
        if let process = ProcessMetrics.read() { out.process(process) }
        return out.text
    }

    /// The NAT tables' entries and flows as the last GC pass counted them (less what the API
    /// deleted since: `conntrackFlush`). Before the first pass (right after the start) one walk
    /// counts them, kept until a pass replaces it.
    func natSummary() async throws -> NATSummary {
        if let summary = status.snapshot.natSummary { return summary }
        let reader = try await datapath.natFlowReader()
        let counted = try await BlockingPool.shared.run { try reader.summarize() }
        status.update { if $0.natSummary == nil { $0.natSummary = counted } }
        return counted
    }
}

/// ifindex to name in masqd's namespace, looked up once per response.
struct DeviceNames {
    private var cache: [UInt32: String?] = [:]

    subscript(ifindex: UInt32) -> String? {
        mutating get {
            if let known = cache[ifindex] { return known }
            let name = RouteLookup.name(of: ifindex)
            cache[ifindex] = name
            return name
        }
    }
}
