@preconcurrency import Glibc
import API
import CMasq
@testable import ControlServer
@testable import Daemon
@testable import Datapath
import Foundation
import Netlink
import NIOHTTP1

import Testing

extension LiveAPITests {
/// The server against a real datapath (loaded, not attached) with every answer checked against
/// docs/api/openapi.yaml.
@Suite("control API server", .serialized)
struct ServerTests {
    let spec: OpenAPIDocument

    init() throws {
        spec = try OpenAPIDocument.load()
    }

    /// GETs (or DELETEs) `uri`, checks the answer against the spec and returns it.
    func call(_ api: LiveAPI, _ uri: String, method: String = "GET", accept: String = MediaType.json,
              expect status: Int = 200) async throws -> HTTPResult {
        let result = method == "DELETE" ? try await api.delete(uri) : try await api.get(uri, accept: accept)
        #expect(result.status == status, "\(method) \(uri): \(result.text)")
        let path = String(uri.split(separator: "?").first ?? "")
        let problems = spec.check(method: method, path: path, status: result.status,
                                  contentType: result.headers.first(name: "content-type"), body: result.body)
        #expect(problems.isEmpty, "\(problems)")
        return result
    }

    @Test("openapi.yaml is structurally sound: no null keys, only Schema Object keywords in schemas, every $ref resolves")
    func specStructure() throws {
        #expect(spec.structuralProblems() == [])
        // The check notices the breakage it exists for: an unquoted ", " in a flow mapping.
        let broken = try OpenAPIDocument(yaml: """
            components:
              schemas:
                A: { type: object, properties: { n: { type: integer, description: One, two. } } }
            """)
        #expect(broken.structuralProblems().contains { $0.hasPrefix("/components/schemas/A/properties/n/two.") })
    }

    @Test("every route is in openapi.yaml and openapi.yaml documents no route the server lacks")
    func specCoversRoutes() {
        let routes = Set(Route.allCases.map { "\($0.method.rawValue) \($0.path)" })
        #expect(routes == spec.operations)
    }

    @Test("status names a family's exclusion CIDR only while that family is masqueraded")
    func exclusionFollowsFamilies() async throws {
        try await LiveAPI.with { api in
            var config = api.config
            config.podCIDRs.append(try IPPrefix("fd00:10:244::/48"))
            for (v4, v6) in [(true, true), (false, true), (true, false)] {
                config.enableIPv4Masquerade = v4
                config.enableIPv6Masquerade = v6
                try await api.datapath.apply(DesiredState(ReconcileInputs(
                    config: config, network: NetworkSnapshot(links: [], defaultRouteDevices: []))))
                let status = try api.decode(StatusResponse.self, try await call(api, "/v1/status")).masquerading
                #expect(status.enabledProtocols.ipv4 == v4 && status.enabledProtocols.ipv6 == v6)
                #expect(status.snatExclusionCIDRv4 == (v4 ? LiveAPI.podCIDR : nil), "IPv4 \(v4), IPv6 \(v6)")
                #expect(status.snatExclusionCIDRv6 == (v6 ? "fd00:10:244::/48" : nil), "IPv4 \(v4), IPv6 \(v6)")
            }
        }
    }

    @Test("healthz, status, ipmasq, config, explain and metrics answer as the spec says")
    func readEndpoints() async throws {
        try await LiveAPI.with { api in
            let health = try api.decode(HealthResponse.self, try await call(api, "/v1/healthz"))
            #expect(health.state == .ok)

            let status = try api.decode(StatusResponse.self, try await call(api, "/v1/status"))
            #expect(status.ready && status.masquerading.mode == "BPF")
            #expect(status.masquerading.snatExclusionCIDRv4 == LiveAPI.podCIDR)
            #expect(status.devices.map(\.snatIPv4) == [IPAddress(LiveAPI.snatAddress)])
            // The device has no IPv6 address while IPv6 masquerading is on: status says why.
            #expect(status.devices.first?.snatIPv4Missing == nil)
            #expect(status.devices.first?.snatIPv6Missing?.hasPrefix("no usable global IPv6 address") == true)
            #expect(status.drops.map(\.code) == DropReason.all.map { Int($0.code) })
            #expect(status.tables.first { $0.name == "masq_nat_v4" }?.maxEntries == 262_144)

            // Read back from the map: exactly what the reconciler wrote.
            let ipmasq = try api.decode(IPMasqResponse.self, try await call(api, "/v1/ipmasq"))
            #expect(ipmasq.cidrs.map(\.description) == LiveAPI.nonMasquerade.sorted())

            let config = try api.decode(ConfigResponse.self, try await call(api, "/v1/config"))
            #expect(config.daemon[.podCIDRs] == .list([LiveAPI.podCIDR]))
            #expect(config.daemon[.conntrackTCPEstablishedTimeout] == .seconds(FlowLifetimes.default.tcpEstablished))
            #expect(config.daemon[.conntrackGCInterval] == .seconds(60))

            let explain = try api.decode(ExplainResponse.self,
                                         try await call(api, "/v1/explain?src=10.244.1.2&dst=100.0.9.7&proto=udp&dport=53&device=lo"))
            #expect(explain.rule == .nonMasqueradeCIDR && explain.cidr?.description == "100.0.9.0/24")
            let out = try api.decode(ExplainResponse.self,
                                     try await call(api, "/v1/explain?src=10.244.1.2&dst=1.1.1.1&device=lo"))
            #expect(out.masquerade && out.snatAddress == IPAddress(LiveAPI.snatAddress))

            let metrics = try await call(api, "/metrics")
            #expect(metrics.text.contains("masq_up 1\n"))
            #expect(metrics.text.contains(#"masq_drops_total{reason="nat_ports_exhausted"} 0"#))
            #expect(metrics.text.contains(#"masq_map_max_entries{map="masq_nat_v4"} 262144"#))
        }
    }

    @Test("an absolute-form request target is served as its path (RFC 9112 3.2.2); /metrics ignores query parameters")
    func requestTargets() async throws {
        #expect(APIRequest.originForm("http://masqd/v1/status?x=1") == "/v1/status?x=1")
        #expect(APIRequest.originForm("HTTP://localhost") == "/")
        #expect(APIRequest.originForm("http://masqd?a=b") == "/?a=b")
        #expect(APIRequest.originForm("/v1/healthz") == "/v1/healthz")
        try await LiveAPI.with { api in
            let absolute = try await TestHTTP.request(socketPath: api.socketPath, method: .GET, uri: "http://masqd/v1/healthz")
            #expect(absolute.status == 200 && absolute.text.contains("Ok"), "\(absolute.status) \(absolute.text)")
            let metrics = try await TestHTTP.request(socketPath: api.socketPath, method: .GET, uri: "/metrics?module=masq")
            #expect(metrics.status == 200 && metrics.text.contains("masq_up 1"), "\(metrics.status)")
        }
    }

    @Test("beyond the event subscribers' limit GET /v1/events is 503, before any stream begins")
    func eventSubscriberLimit() async throws {
        try await LiveAPI.with { api in
            let handlers = APIHandlers(datapath: api.datapath, status: api.status, config: api.config, lifetimes: .default)
            let router = APIRouter(handlers: handlers)
            let held = (0..<EventHub.maxSubscribers).map { _ in handlers.events.subscribe { _ in true } }
            let refused = await router.respond(to: APIRequest(method: "GET", uri: "/v1/events", accept: nil, peer: .unknown))
            guard case .body(let status, _, let body, _) = refused else { Issue.record("a stream began"); return }
            #expect(status == 503 && String(buffer: body).contains("too many event subscribers"))
            _ = held
        }
    }

    @Test("errors are JSON messages with 400, 404 and 405 (with Allow, HEAD in it wherever HEAD is served)")
    func errors() async throws {
        try await LiveAPI.with { api in
            _ = try await call(api, "/v1/conntrack?src=nonsense", expect: 400)
            _ = try await call(api, "/v1/explain?src=10.244.1.2", expect: 400)
            let notFound = try await api.get("/v1/nope")
            #expect(notFound.status == 404)
            #expect(try api.decode(APIError.self, notFound).message.contains("/v1/nope"))
            for (method, path, allow) in [(HTTPMethod.POST, "/v1/status", "GET, HEAD"), (.DELETE, "/v1/healthz", "GET, HEAD"),
                                          (.PUT, "/v1/conntrack", "GET, HEAD, DELETE")] {
                let refused = try await TestHTTP.request(socketPath: api.socketPath, method: method, uri: path)
                #expect(refused.status == 405 && refused.headers.first(name: "allow") == allow, "\(method) \(path): \(refused.headers)")
                // What Allow names is served.
                let head = try await TestHTTP.request(socketPath: api.socketPath, method: .HEAD, uri: path)
                #expect(head.status == 200 && head.body.isEmpty, "HEAD \(path): \(head.status)")
            }
        }
    }

    @Test("every operation documents the errors masqd gives it: 400 for an unknown query parameter (/metrics ignores them), 413 for a body, 431 for large headers")
    func errorsDocumented() async throws {
        try await LiveAPI.with { api in
            for route in Route.allCases {
                let method = route.method.rawValue
                if route != .metrics { _ = try await call(api, route.path + "?x=1", method: method, expect: 400) }
                for (extra, status) in [("Content-Length: 10000000\r\n", 413), ("X-Big: \(String(repeating: "a", count: 20_000))\r\n", 431)] {
                    let raw = try RawSocket(path: api.socketPath)
                    raw.send("\(method) \(route.path) HTTP/1.1\r\nHost: m\r\n\(extra)\r\n")
                    let answer = raw.readAll()
                    let parts = answer.components(separatedBy: "\r\n\r\n")
                    let head = parts[0].components(separatedBy: "\r\n")
                    let code = head[0].split(separator: " ").dropFirst().first.flatMap { Int($0) }
                    #expect(code == status, "\(method) \(route.path): \(head[0])")
                    let contentType = head.first { $0.lowercased().hasPrefix("content-type:") }?.dropFirst("content-type:".count)
                        .trimmingCharacters(in: .whitespaces)
                    let problems = spec.check(method: method, path: route.path, status: code ?? 0, contentType: contentType,
                                              body: Data(parts.dropFirst().joined(separator: "\r\n\r\n").utf8))
                    #expect(problems.isEmpty, "\(problems)")
                }
            }
        }
    }

    /// The TCP flows' original sources ("src:sport"), read page by page with `limit`, at most
    /// `maxPages` pages, and the pages read; `afterPage` runs after each with the pages so far.
    private func tcpFlowsPaged(_ api: LiveAPI, limit: Int, maxPages: Int,
                               afterPage: (Int) async throws -> Void = { _ in }) async throws -> (Set<String>, pages: Int) {
        var seen = Set<String>()
        var cursor: String? = nil
        var pages = 0
        repeat {
            let uri = "/v1/conntrack?proto=tcp&limit=\(limit)" + (cursor.map { "&cursor=\($0)" } ?? "")
            let page = try api.decode(ConntrackPage.self, try await call(api, uri))
            for e in page.entries { seen.insert("\(e.original.src):\(e.original.sport)") }
            cursor = page.nextCursor
            pages += 1
            try await afterPage(pages)
        } while cursor != nil && pages < maxPages
        return (seen, pages)
    }

    @Test("paging sees every flow that lives through it, while other flows are deleted between pages")
    func pagingWhileDeleting() async throws {
        try await LiveAPI.with { api in
            try await api.fillFlows(2_500)
            try await api.fillFlows(2_000, dport: 53, proto: 17)
            let (seen, _) = try await tcpFlowsPaged(api, limit: 100, maxPages: 200) { pages in
                // 250 UDP flows gone before the next page.
                if pages <= 8 {
                    let deleted = try await api.delete("/v1/conntrack?proto=udp&sport=\(10_000 + pages - 1)")
                    #expect(deleted.status == 200, "\(deleted.text)")
                }
            }
            #expect(seen.count == 2_500)
        }
    }

    @Test("conntrack lists flows with their translation, pages with a cursor, streams NDJSON and filters")
    func conntrack() async throws {
        try await LiveAPI.with { api in
            try await api.fillFlows(2_500)
            try await api.fillFlows(10, dport: 53, proto: 17)

            // Paging: every flow exactly once across pages.
            let (seen, pages) = try await tcpFlowsPaged(api, limit: 700, maxPages: 20)
            #expect(seen.count == 2_500)
            #expect(pages >= 4)

            let stream = try await call(api, "/v1/conntrack", accept: MediaType.ndjson)
            let lines = stream.body.split(separator: UInt8(ascii: "\n"))
            #expect(lines.count == 2_510)
            // q=0 is "not acceptable" (RFC 9110 12.4.2): a JSON page.
            let refused = try await call(api, "/v1/conntrack", accept: "application/x-ndjson;q=0, application/json")
            #expect(refused.headers.first(name: "content-type") == MediaType.json)
            #expect(try api.decode(ConntrackPage.self, refused).entries.count == 1000)
            let first = try APIJSON.decoder().decode(ConntrackEntry.self, from: Data(lines[0]))
            #expect(first.translated.src == IPAddress(LiveAPI.snatAddress) && first.device == "lo")
            #expect(first.state == .established && first.replyCounters != nil)
            // Each line is exactly the API encoder's JSON of what it says.
            let encoder = APIJSON.encoder()
            let reencoded = try lines.map { try encoder.encode(APIJSON.decoder().decode(ConntrackEntry.self, from: Data($0))) }
            #expect(reencoded.elementsEqual(lines.map { Data($0) }))
            // A stream from a page's cursor takes up where the page ends.
            let page = try api.decode(ConntrackPage.self, try await call(api, "/v1/conntrack?limit=700"))
            let rest = try await call(api, "/v1/conntrack?cursor=\(try #require(page.nextCursor))", accept: MediaType.ndjson)
            #expect(page.entries.count + rest.body.split(separator: UInt8(ascii: "\n")).count == 2_510)

            let udp = try api.decode(ConntrackPage.self, try await call(api, "/v1/conntrack?proto=udp&dport=53"))
            #expect(udp.entries.count == 10 && udp.entries.allSatisfy { $0.proto == .udp })
            let none = try api.decode(ConntrackPage.self, try await call(api, "/v1/conntrack?dst=100.0.9.0/24"))
            #expect(none.entries.isEmpty)
        }
    }

    @Test("ports lists each source's ports towards each remote port, busiest first, with its share of the range; filters and top narrow it")
    func ports() async throws {
        try await LiveAPI.with { api in
            // Flow i comes from pod 10.244.0.(1 + i % 250): pods .1-.100 hold 3 ports to
            // 100.0.0.2:8080, the others 2; pods .1-.10 one more each to 100.0.0.2:53/udp.
            try await api.fillFlows(600)
            try await api.fillFlows(10, dport: 53, proto: 17)
            let remote = IPAddress("100.0.0.2")!
            let top = try api.decode(PortsResponse.self, try await call(api, "/v1/ports?top=5"))
            #expect(top.flows == 610 && top.exact)
            #expect(top.holders.count == 5)
            #expect(top.holders.allSatisfy { $0.ports == 3 && $0.proto == .tcp && $0.dst == remote && $0.dport == 8080 }, "\(top.holders)")
            #expect(top.holders.allSatisfy { $0.rangeShare == 3 / Double(top.portRange.size) && $0.family == .ipv4 })
            #expect(top.portRange.size == Int(top.portRange.max) - Int(top.portRange.min) + 1)

            let udp = try api.decode(PortsResponse.self, try await call(api, "/v1/ports?proto=udp&dport=53"))
            #expect(udp.flows == 10 && udp.holders.count == 10 && udp.holders.allSatisfy { $0.ports == 1 && $0.proto == .udp })
            let one = try api.decode(PortsResponse.self, try await call(api, "/v1/ports?src=10.244.0.200"))
            #expect(one.holders.map(\.ports) == [2] && one.holders.first?.src == IPAddress("10.244.0.200"))
            let all = try api.decode(PortsResponse.self, try await call(api, "/v1/ports?top=10000"))
            #expect(all.holders.count == 260 && all.holders.map(\.ports).reduce(0, +) == 610)
            _ = try await call(api, "/v1/ports?top=0", expect: 400)
        }
    }

    @Test("IPv6 flows are listed, paged, streamed and deleted beside IPv4 ones: family=ipv6, IPv6 addresses and CIDRs, both entries of a pair")
    func conntrackIPv6() async throws {
        try await LiveAPI.with { api in
            try await api.fillFlows(1_200)
            try await api.fillFlows(1_300, family: .ipv6)
            try await api.fillFlows(20, dport: 0, proto: 1, family: .ipv6)
            let snat6 = IPAddress.v6(LiveAPI.v6(IPv4Address(LiveAPI.snatAddress)!.networkOrder))
            let remote6 = LiveAPI.v6(IPv4Address("100.0.0.2")!.networkOrder)

            // Pages walk masq_nat_v4, then masq_nat_v6: every flow exactly once.
            var seen = Set<String>()
            var cursor: String? = nil
            var pages = 0, families = Set<IPFamily>()
            repeat {
                let page = try api.decode(ConntrackPage.self, try await call(api, "/v1/conntrack?limit=900" + (cursor.map { "&cursor=\($0)" } ?? "")))
                for e in page.entries { seen.insert("\(e.proto) \(e.original.src) \(e.original.sport)") }
                families.formUnion(page.entries.map(\.family))
                cursor = page.nextCursor
                pages += 1
            } while cursor != nil && pages < 20
            #expect(seen.count == 2_520 && families == [.ipv4, .ipv6])

            // family=ipv6: only IPv6 flows, streamed, each line the encoder's JSON of itself.
            let stream = try await call(api, "/v1/conntrack?family=ipv6", accept: MediaType.ndjson)
            let lines = stream.body.split(separator: UInt8(ascii: "\n"))
            #expect(lines.count == 1_320)
            let entries = try lines.map { try APIJSON.decoder().decode(ConntrackEntry.self, from: Data($0)) }
            #expect(entries.allSatisfy { $0.family == .ipv6 && $0.translated.src == snat6 && $0.original.dst == .v6(remote6) })
            #expect(entries.filter { $0.proto == .icmpv6 }.count == 20)
            let tcp = try #require(entries.first { $0.proto == .tcp })
            #expect(tcp.state == .established && tcp.replyCounters != nil && tcp.device == "lo")
            let encoder = APIJSON.encoder()
            #expect(try entries.map { try encoder.encode($0) }.elementsEqual(lines.map { Data($0) }))

            // IPv6 CIDRs and addresses filter; an IPv4 prefix finds no IPv6 flow, and the reverse.
            func count(_ query: String) async throws -> Int {
                try api.decode(ConntrackPage.self, try await call(api, "/v1/conntrack?limit=10000&" + query)).entries.count
            }
            #expect(try await count("src=fd00::af4:0/112&proto=icmpv6") == 20)
            #expect(try await count("dst=\(remote6)&proto=tcp") == 1_300)
            #expect(try await count("src=fd00::af4:1&sport=10000&proto=tcp") == 1)
            #expect(try await count("src=10.244.0.0/16") == 1_200)
            #expect(try await count("family=ipv4&dst=fd00::/8") == 0)
            #expect(try await count("family=ipv6&src=10.244.0.0/16") == 0)
            // A page of the IPv6 table hands out an IPv6 cursor; the stream goes on from it.
            let page = try api.decode(ConntrackPage.self, try await call(api, "/v1/conntrack?family=ipv6&limit=300"))
            let next = try #require(page.nextCursor)
            #expect(next.hasPrefix("6b"))
            let rest = try await call(api, "/v1/conntrack?family=ipv6&cursor=\(next)", accept: MediaType.ndjson)
            #expect(page.entries.count + rest.body.split(separator: UInt8(ascii: "\n")).count == 1_320)

            // DELETE: both entries of each IPv6 pair, the IPv4 table untouched.
            let v4 = try await api.datapath.map(MASQ_MAP_NAT_V4), v6 = try await api.datapath.map(MASQ_MAP_NAT_V6)
            let echo = try api.decode(ConntrackDeleteResponse.self,
                                      try await call(api, "/v1/conntrack?family=ipv6&proto=icmpv6", method: "DELETE"))
            #expect(echo.deleted == 20)
            #expect(try v6.keys(as: masq_nat_key_v6.self).count == 2_600)
            let one = try api.decode(ConntrackDeleteResponse.self,
                                     try await call(api, "/v1/conntrack?src=fd00::af4:1/128&sport=10000", method: "DELETE"))
            #expect(one.deleted == 1)
            #expect(try v6.keys(as: masq_nat_key_v6.self).count == 2_598)
            let all6 = try api.decode(ConntrackDeleteResponse.self, try await call(api, "/v1/conntrack?family=ipv6", method: "DELETE"))
            #expect(all6.deleted == 1_299)
            #expect(try v6.keys(as: masq_nat_key_v6.self).isEmpty)
            #expect(try v4.keys(as: masq_nat_key_v4.self).count == 2_400)
        }
    }

    @Test("a filtered DELETE removes exactly the matching flows, both entries of each pair")
    func deleteFiltered() async throws {
        try await LiveAPI.with { api in
            try await api.fillFlows(300)
            try await api.fillFlows(40, dport: 53, proto: 17)
            let deleted = try api.decode(ConntrackDeleteResponse.self,
                                         try await call(api, "/v1/conntrack?proto=udp&dport=53", method: "DELETE"))
            #expect(deleted.deleted == 40)
            let nat = try await api.datapath.map(MASQ_MAP_NAT_V4)
            #expect(try nat.keys(as: masq_nat_key_v4.self).count == 600)
            let all = try api.decode(ConntrackDeleteResponse.self, try await call(api, "/v1/conntrack", method: "DELETE"))
            #expect(all.deleted == 300)
            #expect(try nat.keys(as: masq_nat_key_v4.self).isEmpty)
        }
    }

    @Test("a peer that is not root gets 403 on DELETE and 200 on GET")
    func nonRootPeer() async throws {
        try await LiveAPI.with(socketGroup: "nogroup") { api in
            var mode = stat()
            #expect(stat(api.socketPath, &mode) == 0)
            #expect(mode.st_mode & 0o777 == 0o660)
            #expect(mode.st_gid == 65534)
            // The test directory must be traversable for the unprivileged client.
            chmod(api.dir, 0o755)
            let client = try builtBinary("masq-client")
            let asNobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", client]
            let get = try await run(asNobody + ["ipmasq", "list", "--socket", api.socketPath])
            #expect(get.status == 0, "\(get.stderr)")
            #expect(get.stdout.hasPrefix("IP PREFIX/ADDRESS\n"))
            let flush = try await run(asNobody + ["conntrack", "flush", "--all", "--socket", api.socketPath])
            #expect(flush.status == 1)
            #expect(flush.stderr.contains("needs uid 0; this connection's peer is uid 65534 (HTTP 403)"), "\(flush.stderr)")
        }
    }
}
}
