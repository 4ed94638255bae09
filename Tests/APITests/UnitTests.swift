@preconcurrency import Glibc
@testable import API
import CMasq
@testable import ControlServer
@testable import Daemon
@testable import Datapath

import Foundation
import NIOCore
import Testing

@Suite("API contract")
struct ContractTests {
    /// A status with every part set.
    static let status = StatusResponse(
        version: "0.1.0", startedAt: Date(timeIntervalSince1970: 1_800_000_000), uptimeSeconds: 5,
        health: HealthResponse(state: .warning, message: "reconcile failed"), ready: true, attachMode: "tcx",
        masquerading: .init(enabled: true, ipMasqAgent: true, devices: ["eth0"],
                            enabledProtocols: .init(ipv4: true, ipv6: false), snatExclusionCIDRv4: "10.0.0.0/8",
                            snatExclusionCIDRv6: nil),
        devices: [.init(name: "eth0", ifindex: 2, snatIPv4: IPAddress("192.0.2.1"), snatIPv6: nil)],
        skippedDevices: [], reconcile: .init(generation: 3, lastAppliedAt: nil, lastError: "x",
                                             failingSince: Date(timeIntervalSince1970: 1_800_000_001), consecutiveFailures: 2),
        ipMasqAgent: .init(enabled: true, path: "/etc/config/ip-masq-agent", generation: 1, lastLoadAt: nil, lastError: nil),
        configReloads: .init(daemon: .init(ok: 1)), tables: [.init(name: "masq_nat_v4", entries: 2, maxEntries: 8)],
        drops: [.init(reason: "invalid_ipv4", code: 130, summary: "s", count: 1)],
        counters: .init(values: ["snatPackets": 4]), countersByFamily: .init(ipv4: .init(values: ["snatPackets": 4])),
        allocation: .init(total: 9))

    /// `status` as JSON, with fields a later masqd might add to the counters: none is a counter.
    static func statusWithUnknownCounters() throws -> Data {
        var object = try #require(try JSONSerialization.jsonObject(with: try APIJSON.encoder().encode(status)) as? [String: Any])
        let unknown: [String: Any] = ["zzUnknown": "x", "zzObject": ["a": 1], "zzNegative": -1, "zzFraction": 1.5, "zzNull": NSNull()]
        var counters = try #require(object["counters"] as? [String: Any])
        counters.merge(unknown) { $1 }
        object["counters"] = counters
        var byFamily = try #require(object["countersByFamily"] as? [String: Any])
        var ipv4 = try #require(byFamily["ipv4"] as? [String: Any])
        ipv4.merge(unknown) { $1 }
        byFamily["ipv4"] = ipv4
        object["countersByFamily"] = byFamily
        return try JSONSerialization.data(withJSONObject: object)
    }

    @Test("a counter field that is no unsigned integer (a later masqd's) is skipped, the counters kept")
    func unknownCountersSkipped() throws {
        #expect(try APIJSON.decoder().decode(StatusResponse.self, from: try Self.statusWithUnknownCounters()) == Self.status)
    }

    @Test("a status without the parts added since the first release (an older masqd's) decodes, those parts empty")
    func olderStatusDecodes() throws {
        let status = Self.status
        let data = try APIJSON.encoder().encode(status)
        #expect(try APIJSON.decoder().decode(StatusResponse.self, from: data) == status)

        var object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        for key in ["health", "configReloads", "countersByFamily", "allocation", "conntrackGC"] { object[key] = nil }
        var reconcile = try #require(object["reconcile"] as? [String: Any])
        reconcile["consecutiveFailures"] = nil
        reconcile["failingSince"] = nil
        object["reconcile"] = reconcile
        let older = try APIJSON.decoder().decode(StatusResponse.self, from: try JSONSerialization.data(withJSONObject: object))
        var expected = status
        expected.health = HealthResponse(state: .unknown)
        expected.configReloads = .init()
        expected.countersByFamily = .init()
        expected.allocation = .init()
        expected.reconcile.failingSince = nil
        expected.reconcile.consecutiveFailures = 0
        #expect(older == expected)
        // What every release sent stays required.
        object["devices"] = nil
        #expect(throws: DecodingError.self) {
            try APIJSON.decoder().decode(StatusResponse.self, from: try JSONSerialization.data(withJSONObject: object))
        }
    }

    @Test("query parameters are percent-decoded and unknown or repeated ones are a 400 naming them")
    func queryParameters() throws {
        let q = try QueryParameters("src=10.0.0.0%2F8&dport=80", allowed: ["src", "dport"])
        #expect(q["src"] == "10.0.0.0/8")
        #expect(throws: APIError.badRequest("bogus: unknown query parameter (known: src)")) {
            try QueryParameters("bogus=1", allowed: ["src"])
        }
        #expect(throws: APIError.badRequest("src: given more than once")) {
            try QueryParameters("src=1.1.1.1&src=2.2.2.2", allowed: ["src"])
        }
        let error = #expect(throws: APIError.self) { try QueryParameters("a=%zz", allowed: ["a"]) }
        #expect(error?.status == 400)
    }

    @Test("conntrack filters parse addresses and CIDRs, reject host bits and bad ports with the parameter's name")
    func conntrackFilter() throws {
        let f = try ConntrackFilter(query: QueryParameters("proto=TCP&src=10.244.1.2&dst=100.0.0.0/24&dport=8080",
                                                          allowed: ConntrackFilter.parameterNames))
        #expect(f.proto == .tcp)
        let host = try IPPrefix("10.244.1.2/32")
        #expect(f.src == host)
        let tuple = FlowTuple(src: IPAddress("10.244.1.2")!, sport: 40000, dst: IPAddress("100.0.0.2")!, dport: 8080)
        #expect(f.matches(family: .ipv4, proto: .tcp, original: tuple))
        #expect(!f.matches(family: .ipv4, proto: .udp, original: tuple))
        var other = tuple
        other.dport = 8081
        #expect(!f.matches(family: .ipv4, proto: .tcp, original: other))

        let hostBits = #expect(throws: APIError.self) {
            try ConntrackFilter(query: QueryParameters("dst=10.0.0.1/8", allowed: ["dst"]))
        }
        #expect(hostBits?.message.hasPrefix("dst: '10.0.0.1/8' has host bits set") == true)
        let port = #expect(throws: APIError.self) {
            try ConntrackFilter(query: QueryParameters("sport=70000", allowed: ["sport"]))
        }
        #expect(port?.message == "sport: '70000' is not valid (expected a port number 0-65535)")
        // What the client sends is what the server reads.
        let again = try ConntrackFilter(query: QueryParameters(QueryParameters.encode(f.queryItems)[...],
                                                              allowed: ConntrackFilter.parameterNames))
        #expect(again == f)
    }

    @Test("query values are what the API documents: numbers are digits only, an address ends where the value ends (a NUL too), enum values any case")
    func strictValues() throws {
        for query in ["limit=+5", "limit=%2B5", "limit=5%20", "sport=-0", "sport=+80", "src=10.244.1.2%00garbage",
                      "dst=fd00::1%00x", "src=10.244.1.0/24%00xyz"] {
            #expect(throws: APIError.self, "\(query)") {
                let q = try QueryParameters(query[...], allowed: ConntrackFilter.parameterNames + ConntrackPaging.parameterNames)
                _ = try ConntrackFilter(query: q)
                _ = try ConntrackPaging(query: q)
            }
        }
        #expect(try ConntrackPaging(query: QueryParameters("limit=0005", allowed: ["limit"])).limit == 5)
        let events = try EventsQuery(query: QueryParameters("types=NEW,Deleted&proto=UDP", allowed: EventsQuery.parameterNames))
        #expect(events.types == [.new, .deleted] && events.filter.proto == .udp)
        #expect(throws: APIError.self) { try EventsQuery(query: QueryParameters("timeout=+3", allowed: EventsQuery.parameterNames)) }
    }

    @Test("routes: unknown path is not found, known path with another method lists the allowed ones")
    func routes() {
        #expect(Route.match(method: "GET", path: "/v1/status") == .found(.status))
        #expect(Route.match(method: "DELETE", path: "/v1/conntrack") == .found(.conntrackFlush))
        #expect(Route.match(method: "HEAD", path: "/v1/healthz") == .found(.healthz))
        #expect(Route.match(method: "GET", path: "/v2/status") == .notFound)
        #expect(Route.match(method: "POST", path: "/v1/conntrack") == .methodNotAllowed(allowed: ["GET", "HEAD", "DELETE"]))
        #expect(Route.match(method: "DELETE", path: "/v1/status") == .methodNotAllowed(allowed: ["GET", "HEAD"]))
        #expect(Route.allCases.filter(\.changesState) == [.conntrackFlush])
    }

    @Test("conntrack's content negotiation honours q-values: the higher wins, q=0 is not acceptable, a tie goes to NDJSON named", arguments: [
        (nil, false), ("application/json", false), ("*/*", false), ("application/*", false), ("text/html", false),
        ("application/x-ndjson", true), ("Application/X-NDJSON; q=1.000", true), ("application/x-ndjson, application/json", true),
        ("application/json, application/x-ndjson", true), ("application/x-ndjson;q=0.5", true), ("application/x-ndjson;q=0.5, */*;q=0.1", true),
        ("application/x-ndjson;q=0, application/json", false), ("application/x-ndjson;q=0", false), ("application/x-ndjson; Q=0.0", false),
        ("application/x-ndjson;q=0.5, application/json", false), ("application/x-ndjson;q=0.5, application/*", false),
        ("application/x-ndjson;q=0.5, application/json;q=0.5", true), ("application/json;q=0.4, application/x-ndjson;q=0.401", true),
        ("application/x-ndjson;q=0.9, application/json;q=0, */*", true), ("application/x-ndjson;q=0.9, application/*;q=0.2, */*", true),
        // The most specific range counts: application/json;q=0 excludes JSON, */* does not bring it back.
        ("application/json;q=0, */*, application/x-ndjson;q=0.1", true),
        // A malformed q-value leaves its element out.
        ("application/x-ndjson;q=2", false), ("application/x-ndjson;q=0.5x", false), ("application/x-ndjson;q=-1", false),
        ("application/x-ndjson;q=1.5, application/json;q=0.1", false),
        ("application/x-ndjson ; q = 0.5, application/json;q=0.4", false), ("application/x-ndjson;q =0.5", false),
        // Media type parameters and accept extensions aside.
        ("application/x-ndjson;charset=utf-8;q=0.8;ext=1, application/json;q=0.7", true),
    ] as [(String?, Bool)])
    func acceptQValues(accept: String?, ndjson: Bool) {
        #expect(APIRouter.prefersNDJSON(accept) == ndjson)
    }

    @Test("errors encode only their message, and JSON keeps CIDR slashes unescaped")
    func errorAndJSON() throws {
        let data = try APIJSON.encoder().encode(APIError.forbidden("no"))
        #expect(String(decoding: data, as: UTF8.self) == #"{"message":"no"}"#)
        let cidrs = try APIJSON.encoder().encode(IPMasqResponse(cidrs: [try IPPrefix("10.0.0.0/8")]))
        #expect(String(decoding: cidrs, as: UTF8.self) == #"{"cidrs":["10.0.0.0/8"]}"#)
    }

    @Test("clients ignore fields they do not know and values added later")
    func forwardCompatible() throws {
        let json = #"{"state":"Degraded","message":"m","extra":1}"#
        let health = try APIJSON.decoder().decode(HealthResponse.self, from: Data(json.utf8))
        #expect(health.state == .unknown)
    }

    @Test("durations print as people write them, and masqd's config parser reads each back")
    func durationText() throws {
        let cases: [(Double, String)] = [(21_600, "6h"), (5_400, "1h30m"), (90, "1m30s"), (10, "10s"), (0.5, "500ms"),
                                         (3_661.25, "1h1m1s250ms"), (0, "0s"), (0.0001, "0.0001s")]
        for (seconds, text) in cases {
            #expect(DurationText.format(seconds: seconds) == text)
            if seconds > 0 { #expect(try DaemonConfig.seconds(.conntrackUDPTimeout, .scalar(text)) == seconds, "\(text)") }
        }
    }

    @Test("the masquerading line reads like Cilium's")
    func masqueradingLine() {
        let m = StatusResponse.Masquerading(enabled: true, ipMasqAgent: true, devices: ["eth0", "eth1"],
                                            enabledProtocols: .init(ipv4: true, ipv6: false),
                                            snatExclusionCIDRv4: "10.0.0.0/16", snatExclusionCIDRv6: nil)
        #expect(m.summaryLine == "BPF (ip-masq-agent)   [eth0, eth1]   10.0.0.0/16   [IPv4: Enabled, IPv6: Disabled]")
    }
}

@Suite("conntrack entries")
struct ConntrackEntryTests {
    static func key(_ s: String, _ sp: UInt16, _ d: String, _ dp: UInt16, proto: UInt8 = 6, dir: Int32 = MASQ_DIR_EGRESS) -> masq_nat_key_v4 {
        var k = masq_nat_key_v4()
        k.saddr = IPv4Address(s)!.networkOrder
        k.daddr = IPv4Address(d)!.networkOrder
        k.sport = sp.bigEndian
        k.dport = dp.bigEndian
        k.proto = proto
        k.dir = UInt8(dir)
        return k
    }

    static func value(_ a: String, _ p: UInt16, flags: UInt32 = 0) -> masq_nat_entry_v4 {
        var v = masq_nat_entry_v4()
        v.to_addr = IPv4Address(a)!.networkOrder
        v.to_port = p.bigEndian
        v.flags = UInt8(flags)
        return v
    }

    /// The flow a walk makes of an EGRESS entry (and its reply's entry).
    static func flow<Key: NATKey>(_ key: Key, _ value: Key.Value, reply: masq_nat_entry_v4? = nil) -> NATFlow {
        NATFlow(tuple: NATEntries.tuple(key, value), toAddress: Key.ipAddress(value.to), egress: value.ct, reply: reply, after: .start)
    }

    @Test("an IPv6 flow is reported as the IPv4 one is, with its family and addresses")
    func ipv6Entry() throws {
        let k4 = Self.key("10.244.1.2", 40000, "100.0.0.2", 8080)
        let v4 = Self.value("100.0.0.1", 32768)
        let k6 = LiveAPI.v6(k4), v6 = LiveAPI.v6(v4)
        let entry = NATEntries.entry(Self.flow(k6, v6), now: 0, lifetimes: .default, deviceName: "ext0")
        #expect(entry.family == .ipv6 && entry.proto == .tcp && entry.kind == .masquerade)
        #expect(entry.original == FlowTuple(src: IPAddress("fd00::af4:102")!, sport: 40000, dst: IPAddress("fd00::6400:2")!, dport: 8080))
        #expect(entry.translated == FlowTuple(src: IPAddress("fd00::6400:1")!, sport: 32768, dst: IPAddress("fd00::6400:2")!, dport: 8080))
        let ingress = try #require(NATEntries.partner(k6, v6))
        #expect(NATEntries.tuple(ingress, LiveAPI.v6(Self.value("10.244.1.2", 40000))) == NATEntries.tuple(k6, v6))
        // An IPv4 entry with the same fields is the same flow but for the family.
        var same = NATEntries.entry(Self.flow(k4, v4), now: 0, lifetimes: .default, deviceName: "ext0")
        same.family = .ipv6
        same.original = entry.original
        same.translated = entry.translated
        #expect(same == entry)
    }

    @Test("the NAT tables a filter can match in: its family, and that of its src and dst prefixes")
    func filterFamilies() throws {
        func families(_ f: ConntrackFilter) -> Set<NATFamily> { f.natFamilies }
        #expect(families(ConntrackFilter()) == [.ipv4, .ipv6])
        #expect(families(ConntrackFilter(family: .ipv6)) == [.ipv6])
        #expect(families(ConntrackFilter(src: try IPPrefix("fd00::/64"))) == [.ipv6])
        #expect(families(ConntrackFilter(dst: try IPPrefix("10.0.0.1"))) == [.ipv4])
        #expect(families(ConntrackFilter(family: .ipv4, src: try IPPrefix("fd00::/64"))).isEmpty)
        #expect(families(ConntrackFilter(src: try IPPrefix("10.0.0.0/8"), dst: try IPPrefix("fd00::1"))).isEmpty)
        let filter = try #require(ConntrackFilter(proto: .icmpv6, src: try IPPrefix("fd00::af4:0/112")).flowTupleFilter)
        #expect(filter(58, IPAddress("fd00::af4:102")!, 7, IPAddress("fd00::6400:2")!, 0))
        #expect(!filter(58, IPAddress("fd00::af5:102")!, 7, IPAddress("fd00::6400:2")!, 0))
        #expect(!filter(1, IPAddress("fd00::af4:102")!, 7, IPAddress("fd00::6400:2")!, 0))
    }

    @Test("an EGRESS entry and its INGRESS partner name each other, for TCP and for ICMP echo")
    func partners() throws {
        let egress = Self.key("10.244.1.2", 40000, "100.0.0.2", 8080)
        let value = Self.value("100.0.0.1", 32768)
        let ingress = try #require(NATEntries.partner(egress, value))
        #expect(ingress.saddr == egress.daddr && ingress.daddr == value.to_addr)
        #expect(UInt16(bigEndian: ingress.sport) == 8080 && UInt16(bigEndian: ingress.dport) == 32768)
        #expect(ingress.dir == UInt8(MASQ_DIR_INGRESS))
        let back = try #require(NATEntries.partner(ingress, Self.value("10.244.1.2", 40000)))
        #expect(back.saddr == egress.saddr && back.sport == egress.sport && back.dport == egress.dport && back.dir == egress.dir)
        #expect(NATEntries.tuple(ingress, Self.value("10.244.1.2", 40000)) == NATEntries.tuple(egress, value))
        #expect(NATEntries.tuple(egress, value) == NATFlowTuple(family: .ipv4, proto: 6, src: IPAddress("10.244.1.2")!, sport: 40000,
                                                              dst: IPAddress("100.0.0.2")!, dport: 8080))

        // ICMP echo: the id is sport in EGRESS keys and dport in INGRESS keys.
        let echo = Self.key("10.244.1.2", 77, "100.0.0.2", 0, proto: 1)
        let echoReply = try #require(NATEntries.partner(echo, Self.value("100.0.0.1", 900)))
        #expect(echoReply.sport == 0 && UInt16(bigEndian: echoReply.dport) == 900)
    }

    @Test("an inbound flow stands alone and is reported untranslated")
    func inbound() {
        let k = Self.key("10.244.1.2", 80, "100.0.0.2", 50000)
        let v = Self.value("10.244.1.2", 80, flags: MASQ_NAT_F_INBOUND)
        #expect(NATEntries.partner(k, v) == nil)
        let entry = NATEntries.entry(Self.flow(k, v), now: 0, lifetimes: .default, deviceName: "ext0")
        #expect(entry.kind == ConntrackEntry.Kind.inbound && entry.translated == entry.original)
    }

    @Test("state, age and expiry come from the TCP state, the seen flags and CLOCK_BOOTTIME stamps")
    func stateAndExpiry() throws {
        var v = Self.value("100.0.0.1", 40000)
        v.created = 1_000_000_000
        v.last_seen = 5_000_000_000
        v.seen = UInt8(MASQ_SEEN_SYN)
        v.tcp_state = UInt8(MASQ_TCP_ESTABLISHED)
        var reply = Self.value("10.244.1.2", 40000)
        reply.seen = UInt8(MASQ_SEEN_SYNACK | MASQ_SEEN_REPLY)
        reply.last_seen = 6_000_000_000
        reply.packets = 3
        let entry = NATEntries.entry(Self.flow(Self.key("10.244.1.2", 40000, "100.0.0.2", 8080), v, reply: reply),
                                     now: 16_000_000_000, lifetimes: .default, deviceName: nil)
        #expect(entry.state == .established)
        #expect(entry.ageSeconds == 15)
        #expect(entry.expiresInSeconds == FlowLifetimes.default.tcpEstablished - 10)
        #expect(entry.replyCounters?.packets == 3)
        // To the millisecond: no binary-fraction tails in the JSON.
        let odd = NATEntries.entry(Self.flow(Self.key("10.244.1.2", 40000, "100.0.0.2", 8080), v, reply: reply),
                                   now: 16_123_456_789, lifetimes: .default, deviceName: nil)
        #expect(odd.ageSeconds == 15.123 && odd.expiresInSeconds == FlowLifetimes.default.tcpEstablished - 10.123)
        #expect(String(decoding: try APIJSON.encoder().encode(odd), as: UTF8.self).contains(#""ageSeconds":15.123,"#))
        #expect(FlowLifetimes.state(proto: .udp, tcpState: 0, seen: 0) == .unreplied)
        #expect(FlowLifetimes.state(proto: .udp, tcpState: 0, seen: UInt8(MASQ_SEEN_REPLY)) == .replied)
        #expect(FlowLifetimes.state(proto: .tcp, tcpState: UInt8(MASQ_TCP_FIN_WAIT), seen: UInt8(MASQ_SEEN_FIN)) == .finWait)
        #expect(FlowLifetimes.default.lifetime(proto: .tcp, state: .closeWait) == 60)
    }

    /// Entries with every kind of value the stream writes: odd doubles, extreme counters and
    /// ports, both families, device names that need escapes, absent optionals.
    static func sampleEntries() -> [ConntrackEntry] {
        var generator = SystemRandomNumberGenerator()
        let doubles: [Double] = [0, 1, 15, 0.5, 1e-9, 0.1 + 0.2, 21_599.999999999, 123_456.789, 3e15, 1e16, 7.2e-5,
                                 Double(UInt32.max) + 0.25]
            + (0..<200).map { _ in Double.random(in: 0..<100_000, using: &generator) }
            + (0..<50).map { _ in Double(UInt64.random(in: 0...40_000_000_000_000, using: &generator)) / 1e9 }
        let devices: [String?] = [nil, "eth0", "ext0.100", "we\"ird\\name", "tab\there", "ctl\u{1}\u{1f}", "ünï/cødé", "new\nline",
                                  "emoji🙂"]
        let addresses: [IPAddress] = [IPAddress("0.0.0.0")!, IPAddress("10.244.1.2")!, IPAddress("255.255.255.255")!,
                                      IPAddress("100.0.0.1")!, IPAddress("fd00::1")!, IPAddress("2001:db8::ff00:42:8329")!]
        return doubles.indices.map { i in
            func pick<T>(_ values: [T], _ salt: Int) -> T { values[(i * 7 + salt) % values.count] }
            let counters = FlowCounters(packets: pick([0, 1, 9, 10, 99, 1_000_000, UInt64.max], 1),
                                        bytes: pick([0, 60, 1500, UInt64.max / 3, 12_345_678_901], 2))
            return ConntrackEntry(
                family: pick([.ipv4, .ipv6], 3), proto: pick([.tcp, .udp, .icmp, .icmpv6], 4),
                kind: pick([.masquerade, .host, .inbound], 5),
                original: FlowTuple(src: pick(addresses, 6), sport: pick([0, 1, 80, 40000, 65535], 7),
                                    dst: pick(addresses, 8), dport: pick([0, 9, 443, 8080, 65535], 9)),
                translated: FlowTuple(src: pick(addresses, 10), sport: pick([0, 32768, 65535], 11),
                                      dst: pick(addresses, 12), dport: pick([53, 10], 13)),
                state: pick(FlowState.allCases.filter { $0 != .unknown }, 14), ageSeconds: doubles[i],
                expiresInSeconds: pick(doubles, 15), originalCounters: counters,
                replyCounters: i % 3 == 0 ? nil : FlowCounters(packets: UInt64(i), bytes: UInt64(i) * 1000),
                device: pick(devices, 16), ifindex: pick([0, 1, 7, 4_294_967_295], 17))
        }
    }

    @Test("the stream's hand-written NDJSON line is byte for byte the API encoder's JSON of the entry")
    func ndjsonMatchesEncoder() throws {
        let encoder = APIJSON.encoder()
        var ndjson = ConntrackNDJSON()
        for entry in Self.sampleEntries() {
            var buffer = ByteBuffer()
            ndjson.write(entry, to: &buffer)
            let expected = String(decoding: try encoder.encode(entry), as: UTF8.self) + "\n"
            #expect(String(buffer: buffer) == expected)
        }
    }

    /// Events of every type, optional fields on and off, both families, escaped names; dates
    /// whole and fractional (the encoder writes whole seconds), at day, month and leap-year
    /// edges, at the hand-written line's range ends and beyond them (the encoder's own text).
    static func sampleEvents() -> [FlowEvent] {
        var generator = SystemRandomNumberGenerator()
        let entries = sampleEntries()
        let times: [Date?] = [nil, Date(), Date(timeIntervalSince1970: 0), Date(timeIntervalSince1970: 0.999_999),
                              Date(timeIntervalSince1970: 951_782_399.5), Date(timeIntervalSince1970: 951_868_800),
                              Date(timeIntervalSince1970: 1_798_761_599.999), Date(timeIntervalSince1970: 4_107_542_400),
                              Date(timeIntervalSince1970: 253_402_300_799.9), Date(timeIntervalSince1970: 253_402_300_800),
                              Date(timeIntervalSince1970: -1), Date(timeIntervalSince1970: -86_400 * 365.25 * 100)]
            + (0..<300).map { _ in Date(timeIntervalSince1970: Double.random(in: 0..<4_102_444_800, using: &generator)) }
        return times.enumerated().map { i, time in
            func pick<T>(_ values: [T], _ salt: Int) -> T { values[(i * 5 + salt) % values.count] }
            let entry = entries[i % entries.count]
            return FlowEvent(
                type: pick(FlowEvent.EventType.allCases, 1), time: time, family: pick([nil, .ipv4, .ipv6], 2),
                proto: pick([nil, .tcp, .udp, .icmp, .icmpv6], 3), kind: pick([nil, .masquerade, .host, .inbound], 4),
                original: pick([nil, entry.original], 5), translated: pick([nil, entry.translated], 6),
                device: pick([nil, entry.device], 7), ifindex: pick([nil, 0, 3, UInt32.max], 8),
                keptPort: pick([nil, true, false], 9), candidates: pick([nil, 0, 1, 16, Int.max], 10),
                reason: pick([nil, "nat_ports_exhausted", "we\"ird"], 11), direction: pick([nil, .egress, .ingress], 12),
                state: pick([nil] + FlowState.allCases, 13), count: pick([nil, 0, 1, 1024, -5, Int.min], 14))
        }
    }

    @Test("an event's hand-written NDJSON line is byte for byte the API encoder's JSON of it")
    func eventNDJSONMatchesEncoder() throws {
        let encoder = APIJSON.encoder()
        var ndjson = EventNDJSON()
        for event in Self.sampleEvents() {
            var buffer = ByteBuffer()
            ndjson.write(event, to: &buffer)
            let expected = String(decoding: try encoder.encode(event), as: UTF8.self) + "\n"
            #expect(String(buffer: buffer) == expected)
        }
    }

    @Test("the client reads each event line as JSONDecoder does, without it for every date the stream spells")
    func eventLineReaderMatchesDecoder() throws {
        let decoder = APIJSON.decoder(), pretty = APIJSON.encoder(pretty: true)
        var ndjson = EventNDJSON()
        for event in Self.sampleEvents() {
            var buffer = ByteBuffer()
            ndjson.write(event, to: &buffer)
            let line = Data(buffer.readableBytesView.dropLast())
            let expected = try decoder.decode(FlowEvent.self, from: line)
            let fast = line.withUnsafeBytes { JSONLineReader.read($0) { $0.event() } }
            // The reader's own result, unless the date is one the stream does not spell by hand.
            if let time = event.time, time.timeIntervalSince1970 < 0 || time.timeIntervalSince1970 >= 253_402_300_800 {
                #expect(fast == nil)
            } else {
                #expect(fast == expected, "\(String(decoding: line, as: UTF8.self))")
            }
            #expect(try FlowEvent(ndjsonLine: line, decoder: decoder) == expected)
            let spaced = try pretty.encode(event)
            #expect(try FlowEvent(ndjsonLine: spaced, decoder: decoder) == decoder.decode(FlowEvent.self, from: spaced))
        }
        let tuple = #"{"dport":443,"dst":"1.2.3.4","sport":5,"src":"10.0.0.1"}"#
        let base = #""original":\#(tuple),"time":"2026-12-02T04:09:34Z","type":"new""#
        func fast(_ text: String) -> FlowEvent? { Data(text.utf8).withUnsafeBytes { JSONLineReader.read($0) { $0.event() } } }
        // null for an absent value, unknown keys of any type, a type added later.
        #expect(fast(#"{\#(base),"device":null,"keptPort":null,"zone":{"a":[1,true]}}"#) == fast("{\(base)}"))
        #expect(fast(#"{"type":"renamed"}"#)?.type == .unknown)
        // Not taken by the reader: JSONDecoder decides.
        for text in [#"{"original":\#(tuple),"time":"2026-12-02T04:09:34+00:00","type":"new"}"#,
                     #"{"time":"2026-12-02T04:09:34.5Z","type":"new"}"#, #"{"time":"2026-02-30T00:00:00Z","type":"new"}"#,
                     #"{"time":"1969-12-31T23:59:59Z","type":"new"}"#, #"{"count":1.5,"type":"lost"}"#,
                     #"{"count":9223372036854775808,"type":"lost"}"#, #"{"keptPort":1,"type":"new"}"#, #"{"time":null}"#,
                     "{\(base)} x"] {
            #expect(fast(text) == nil, "\(text)")
            let viaInit = Result { try FlowEvent(ndjsonLine: Data(text.utf8), decoder: decoder) }
            let viaDecoder = Result { try decoder.decode(FlowEvent.self, from: Data(text.utf8)) }
            #expect((try? viaInit.get()) == (try? viaDecoder.get()), "\(text)")
        }
    }

    @Test("the client's line reader reads every line the stream and the encoder write, as JSONDecoder does, without it")
    func lineReaderMatchesDecoder() throws {
        let encoder = APIJSON.encoder(pretty: true), decoder = APIJSON.decoder()
        var ndjson = ConntrackNDJSON()
        for entry in Self.sampleEntries() {
            var buffer = ByteBuffer()
            ndjson.write(entry, to: &buffer)
            let line = Data(buffer.readableBytesView.dropLast())
            // The fast reader itself, not its fallback; and equal to the fallback's result.
            #expect(line.withUnsafeBytes { JSONLineReader.read($0) { $0.entry() } } == entry, "\(String(decoding: line, as: UTF8.self))")
            #expect(try ConntrackEntry(ndjsonLine: line, decoder: decoder) == decoder.decode(ConntrackEntry.self, from: line))
            // Whitespace between every token: still JSON, still read.
            let pretty = try encoder.encode(entry)
            #expect(pretty.withUnsafeBytes { JSONLineReader.read($0) { $0.entry() } } == entry)
        }
    }

    @Test("the line reader skips unknown keys and reads escapes and null; what it does not take, JSONDecoder decides")
    func lineReaderEdges() throws {
        let decoder = APIJSON.decoder()
        func fast(_ text: String) -> ConntrackEntry? { Data(text.utf8).withUnsafeBytes { JSONLineReader.read($0) { $0.entry() } } }
        let tuple = #"{"dport":443,"dst":"1.2.3.4","sport":5,"src":"10.0.0.1"}"#
        let base = #""ageSeconds":1.5,"expiresInSeconds":2e1,"family":"ipv4","ifindex":3,"kind":"masquerade","original":\#(tuple),"originalCounters":{"bytes":2,"packets":1},"protocol":"tcp","state":"established","translated":\#(tuple)"#
        let plain = try #require(fast("{\(base)}"))
        #expect(plain.expiresInSeconds == 20 && plain.device == nil && plain.replyCounters == nil)
        // Keys a newer daemon may add, of every type, nested; null optionals; a newer enum value.
        let extended = #"{"new":{"a":[1,-2.5e-3,true,false,null,"x\"y",{"b":[]}],"c":{}},\#(base),"device":null,"replyCounters":null,"zone":[ ]}"#
        #expect(fast(extended) == plain)
        var future = try #require(fast("{\(base),\"state\":\"sleeping\"}"))
        #expect(future.state == .unknown)
        future = try #require(fast(#"{\#(base),"device":"a\"b\\c\/d\u00e9\ud83d\ude42\n"}"#))
        #expect(future.device == "a\"b\\c/dé🙂\n")
        // Not taken by the reader: JSONDecoder decides (and words the errors).
        for text in ["{\(base),\"ifindex\":-1}", "{\(base),\"ifindex\":4294967296}", "{\(base),\"ifindex\":1.0}",
                     "{\(base),\"ifindex\":01}", #"{\#(base),"device":"\ud800"}"#, "{\(base),\"ageSeconds\":1e999}",
                     "{\(base.replacingOccurrences(of: #""kind":"masquerade","#, with: ""))}",
                     "{\(base.replacingOccurrences(of: "1.2.3.4", with: "1.2.3"))}", "{\(base)} x", "{\(base),}"] {
            #expect(fast(text) == nil, "\(text)")
            let viaInit = Result { try ConntrackEntry(ndjsonLine: Data(text.utf8), decoder: decoder) }
            let viaDecoder = Result { try decoder.decode(ConntrackEntry.self, from: Data(text.utf8)) }
            #expect((try? viaInit.get()) == (try? viaDecoder.get()), "\(text)")
        }
    }

    @Test("the stream writes IPv6 addresses as inet_ntop does: zero runs, ties, leading and trailing runs, dotted forms, random ones")
    func ndjsonIPv6Addresses() throws {
        var generator = SystemRandomNumberGenerator()
        var texts = ["::", "::1", "fd00::", "fd00::1", "1:0:0:2::3", "1::2:0:0:3", "1:0:1:0:1:0:1:0", "2001:db8::ff00:42:8329",
                     "::ffff:10.0.0.1", "::10.0.0.1", "::ffff:0:a00:1", "0:0:0:0:1::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                     "fd00:10:244:1::10", "fe80::1", "1:2:3:4:5:6:7:0", "0:1:2:3:4:5:6:7", "1:2:3:0:0:6:7:8"]
        // Random groups, each zero half the time: every shape of run.
        for _ in 0..<2000 {
            texts.append((0..<8).map { _ in Bool.random(using: &generator) ? "0" : String(UInt16.random(in: 1...0xffff, using: &generator), radix: 16) }
                .joined(separator: ":"))
        }
        var ndjson = ConntrackNDJSON()
        for text in texts {
            let address = try #require(IPAddress(text))
            let entry = ConntrackEntry(family: .ipv6, proto: .udp, kind: .masquerade,
                                       original: FlowTuple(src: address, sport: 1, dst: address, dport: 2),
                                       translated: FlowTuple(src: address, sport: 3, dst: address, dport: 2), state: .replied,
                                       ageSeconds: 1, expiresInSeconds: 2, originalCounters: FlowCounters(packets: 1, bytes: 2),
                                       replyCounters: nil, device: nil, ifindex: 1)
            var buffer = ByteBuffer()
            ndjson.write(entry, to: &buffer)
            #expect(String(buffer: buffer).contains(#""src":"\#(address.description)""#), "\(text): \(String(buffer: buffer))")
            #expect(String(buffer: buffer) == String(decoding: try APIJSON.encoder().encode(entry), as: UTF8.self) + "\n")
        }
    }

    @Test("cursors round-trip and a foreign cursor is a 400")
    func cursors() throws {
        for cursor in [ConntrackCursor.start, ConntrackCursor(token: 1234, skip: 7), ConntrackCursor(family: .ipv6, token: nil, skip: 3),
                       ConntrackCursor(family: .ipv6, token: 99, skip: 0)] {
            #expect(try ConntrackCursor(cursor.text) == cursor)
        }
        #expect(ConntrackCursor(family: .ipv6, token: 99, skip: 2).text == "6b99.2")
        #expect(throws: APIError.self) { try ConntrackCursor("6") }
        #expect(throws: APIError.self) { try ConntrackCursor("4b1.2") }
        #expect(throws: APIError.self) { try ConntrackCursor("abc") }
        #expect(throws: APIError.self) { try ConntrackCursor("b12.-1") }
    }
}

@Suite("openapi address patterns")
struct AddressPatternTests {
    /// openapi.yaml's patterns for Address and AddressOrCIDR.
    static func patterns() throws -> (address: Regex<AnyRegexOutput>, addressOrCIDR: Regex<AnyRegexOutput>) {
        let schemas = try #require((OpenAPIDocument.load().root["components"] as? [String: Any])?["schemas"] as? [String: Any])
        func pattern(_ name: String) throws -> Regex<AnyRegexOutput> {
            try Regex(try #require((schemas[name] as? [String: Any])?["pattern"] as? String, "\(name) has no pattern"))
        }
        return (try pattern("Address"), try pattern("AddressOrCIDR"))
    }

    /// Whether masqd's parsers take `text`: as an address (explain's src and dst), and as an
    /// address or ADDRESS/LENGTH (the filters' src and dst; host bits set are refused after the
    /// parse, which no pattern can say).
    static func parsed(_ text: String) -> (address: Bool, addressOrCIDR: Bool) {
        let prefix: Bool
        do {
            _ = try QueryParameters(items: ["src": text]).prefix("src")
            prefix = true
        } catch {
            prefix = error.message.contains("has host bits set")
        }
        return ((try? QueryParameters(items: ["src": text]).address("src")) != nil, prefix)
    }

    static func check(_ texts: [String]) throws -> (matched: Int, problems: [String]) {
        let (address, addressOrCIDR) = try patterns()
        var problems: [String] = []
        var matched = 0
        for text in texts {
            let parsed = Self.parsed(text)
            let byAddress = (try? address.wholeMatch(in: text)) != nil
            let byCIDR = (try? addressOrCIDR.wholeMatch(in: text)) != nil
            if byAddress != parsed.address { problems.append("Address \(text.debugDescription): pattern \(byAddress), parser \(parsed.address)") }
            if byCIDR != parsed.addressOrCIDR { problems.append("AddressOrCIDR \(text.debugDescription): pattern \(byCIDR), parser \(parsed.addressOrCIDR)") }
            if byCIDR { matched += 1 }
        }
        return (matched, problems)
    }

    @Test("the patterns take exactly what the parsers take, examples")
    func examples() throws {
        let valid = ["0.0.0.0", "10.244.0.0/16", "255.255.255.255/32", "10.0.0.1/008", "10.0.0.0/0", "::", "::/0", "::1", "fd00::/64",
                     "FD00:0:0:0:0:0:0:0/128", "1:2:3:4:5:6:7:8", "1::", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1::8", "0001:002:03:4::",
                     "::ffff:10.0.0.1", "::10.0.0.1", "1:2:3:4:5:6:10.0.0.1", "1::5:6:10.0.0.1", "1:2:3:4:5::10.0.0.1/0128", "fd00::/064"]
        let invalid = ["", "10.0.0", "10.0.0.0.0", "010.0.0.0", "256.0.0.0", "10.0.0.0/33", "10.0.0.0/-0", "10.0.0.0/+8", "10.0.0.0/",
                       "10.0.0.0/8/8", "10.0.0.0/ 8", " 10.0.0.0", "10.0.0.0\n", "10.0.0.0/8\n", "1.2.3.4a", ":", ":::", "1:::2", "1::2::3",
                       ":1::", "1::2:", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7", "1::2:3:4:5:6:7:8", "00001::", "g::", "fd00::/129",
                       "fd00::%eth0", "1:2:3:4:5:6:7:10.0.0.1", "1:2:3:4:5:6::10.0.0.1", "::10.0.0.01", "::10.0.0", "::a.0.0.1",
                       "10.0.0.1::", "[::1]", "::1/1a", "0x0a.0.0.1", "１.2.3.4"]
        let (matched, problems) = try Self.check(valid + invalid)
        #expect(problems == [])
        #expect(matched == valid.count)
    }

    @Test("the patterns take exactly what the parsers take, every arrangement of up to 9 groups, one or two '::', a dotted tail and a length")
    func arrangements() throws {
        var texts: [String] = []
        for count in 0...9 {
            for group in ["0", "ab", "FFFF", "12345"] {
                let groups = Array(repeating: group, count: count)
                for compressed in [nil] + Array(0...count) + [-1] {
                    var text: String
                    switch compressed {
                    case nil: text = groups.joined(separator: ":")
                    case -1: text = groups.prefix(1).joined() + "::" + groups.dropFirst().prefix(2).joined(separator: ":") + "::"
                        + groups.dropFirst(3).joined(separator: ":")
                    case let at?: text = groups[..<at].joined(separator: ":") + "::" + groups[at...].joined(separator: ":")
                    }
                    for tail in ["", "10.0.0.1", "1.2.3.256"] {
                        let whole = tail.isEmpty ? text : text + (text.isEmpty || text.hasSuffix(":") ? "" : ":") + tail
                        for length in ["", "/0", "/32", "/33", "/128", "/129"] { texts.append(whole + length) }
                    }
                }
            }
        }
        let (matched, problems) = try Self.check(texts)
        #expect(problems == [])
        #expect(matched > 500, "\(matched) of \(texts.count)")
    }
}

@Suite("metrics text")
struct PrometheusTextTests {
    @Test("families carry HELP and TYPE once, label values are escaped, integers print without a fraction")
    func exposition() {
        var text = PrometheusText()
        text.family("masq_drops_total", .counter, help: "Drops.", [(["reason": #"a"b\c"#], 3), (["reason": "x"], 0.5)])
        text.family("masq_empty", .gauge, help: "None.", [])
        #expect(text.text == """
            # HELP masq_drops_total Drops.
            # TYPE masq_drops_total counter
            masq_drops_total{reason="a\\"b\\\\c"} 3
            masq_drops_total{reason="x"} 0.5

            """)
    }
}

@Suite("shared reads")
struct SharedReadTests {
    /// Counts reads and holds each one open until the test lets it finish.
    actor Reads {
        var started = 0
        var gate: CheckedContinuation<Void, Never>?

        func read() async -> Int {
            started += 1
            let n = started
            await withCheckedContinuation { gate = $0 }
            return n
        }

        func finish() {
            gate?.resume()
            gate = nil
        }

        var waiting: Bool { gate != nil }
    }

    @Test("requests that come while a read is in flight get its answer; the next one reads afresh")
    func coalesces() async throws {
        let shared = SharedRead<Int>()
        let reads = Reads()
        let first = Task { try await shared.value { await reads.read() } }
        while await !reads.waiting { await Task.yield() }
        // Eight more while the first read is held open: they must join it, not start their own.
        let joined = (0..<8).map { _ in Task { try await shared.value { await reads.read() } } }
        while await shared.joined < 8 { await Task.yield() }
        await reads.finish()
        #expect(try await first.value == 1)
        for task in joined { #expect(try await task.value == 1) }
        #expect(await reads.started == 1)

        let later = Task { try await shared.value { await reads.read() } }
        while await !reads.waiting { await Task.yield() }
        await reads.finish()
        #expect(try await later.value == 2)
    }

    @Test("a failed read fails the requests that waited for it, and the next request reads again")
    func sharesFailure() async throws {
        struct Failed: Error, Equatable {}
        let shared = SharedRead<Int>()
        await #expect(throws: Failed.self) { try await shared.value { throw Failed() } }
        #expect(try await shared.value { 7 } == 7)
    }
}

@Suite("start checks")
struct StartCheckTests {
    private func config(_ address: String) throws -> DaemonConfig {
        try DaemonConfig(file: [:], flags: [.podCIDRs: .scalar("10.244.1.0/24"), .prometheusServeAddr: .scalar(address)])
    }

    @Test("prometheus-serve-addr that masqd could not listen at stops the start before anything is attached, naming the key")
    func metricsAddress() throws {
        // An address this host does not have (TEST-NET-1).
        #expect(throws: ControlSocketError.self) { try ControlServices.checkMetricsAddress(try config("192.0.2.99:9962")) }
        do {
            try ControlServices.checkMetricsAddress(try config("192.0.2.99:9962"))
        } catch {
            #expect("\(error)".hasPrefix("prometheus-serve-addr 192.0.2.99:9962: cannot listen there: Cannot assign requested address"), "\(error)")
        }
        // A port another socket listens on.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        #expect(bound == 0 && listen(fd, 1) == 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        let port = UInt16(bigEndian: address.sin_port)
        #expect(throws: ControlSocketError.self) { try ControlServices.checkMetricsAddress(try config("127.0.0.1:\(port)")) }
        close(fd)
        // Free again: nothing to say.
        try ControlServices.checkMetricsAddress(try config("127.0.0.1:\(port)"))
        try ControlServices.checkMetricsAddress(try DaemonConfig(file: [:], flags: [.podCIDRs: .scalar("10.244.1.0/24")]))
    }
}
