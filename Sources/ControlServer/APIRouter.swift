import API
import Daemon
import Datapath
import Foundation
import NIOCore

/// One request as the router sees it: the head's method, path and query, what the client
/// accepts, and who the peer is.
struct APIRequest: Sendable {
    var method: String
    var path: String
    var query: Substring?
    var accept: String?
    var peer: PeerCredentials

    init(method: String, uri: String, accept: String?, peer: PeerCredentials) {
        self.method = method
        let parts = Self.originForm(uri).split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        path = String(parts.first ?? "")
        query = parts.count > 1 ? parts[1] : nil
        self.accept = accept
        self.peer = peer
    }

    /// The path and query of a request target: an absolute-form target (`http://masqd/v1/status`),
    /// which a server must accept (RFC 9112 3.2.2), loses its scheme and authority.
    static func originForm(_ target: String) -> Substring {
        for scheme in ["http://", "https://"] where target.lowercased().hasPrefix(scheme) {
            let rest = target.dropFirst(scheme.count)
            guard let slash = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) else { return "/" }
            return rest[slash] == "?" ? Substring("/" + rest[slash...]) : rest[slash...]
        }
        return target[...]
    }
}

/// What a handler answers: a complete body, or a stream written as it is produced.
enum APIResponse: Sendable {
    case body(status: Int, contentType: String, ByteBuffer, headers: [(String, String)] = [])
    case stream(contentType: String, @Sendable (ResponseBodyWriter) async throws -> Void)

    static func json<T: Encodable>(_ value: T, status: Int = 200) throws -> APIResponse {
        var buffer = ByteBuffer(bytes: try APIJSON.encoder().encode(value))
        buffer.writeInteger(UInt8(ascii: "\n"))
        return .body(status: status, contentType: MediaType.json, buffer)
    }
}

/// Writes a streamed response's body; each write waits until the connection can take more.
struct ResponseBodyWriter: Sendable {
    let sink: @Sendable (ByteBuffer) async throws -> Void

    func write(_ buffer: ByteBuffer) async throws {
        try await sink(buffer)
    }
}

/// A known path asked with a method it does not have.
struct MethodNotAllowed: Error {
    var method: String
    var path: String
    var allowed: [String]
}

/// Routes a request to its handler: one switch on the route (method and path), the uid check
/// for state-changing routes, and one function turning errors into responses.
struct APIRouter: Sendable {
    /// What a listener serves.
    enum Scope: Sendable {
        /// Every route (the Unix socket).
        case control
        /// `/metrics` and `/healthz`, read only, nothing else (the TCP listener of
        /// `prometheus-serve-addr`, where scrapers and kubelet probes find them).
        case metrics
    }

    let handlers: APIHandlers
    var scope: Scope = .control

    /// The metrics listener's paths.
    static let metricsRoutes: [String: Route] = ["/metrics": .metrics, "/healthz": .healthz]

    /// The route for a request on this router's listener.
    func match(method: String, path: String) -> Route.Match {
        switch scope {
        case .control:
            return Route.match(method: method, path: path)
        case .metrics:
            guard let route = Self.metricsRoutes[path] else { return .notFound }
            return method == "GET" || method == "HEAD" ? .found(route) : .methodNotAllowed(allowed: ["GET", "HEAD"])
        }
    }

    /// Whether the answer to `request` may be a large body (a conntrack page, a port listing),
    /// which `APIServer` builds only with a `LargeBodies` permit.
    func buildsLargeBody(_ request: APIRequest) -> Bool {
        switch match(method: request.method, path: request.path) {
        case .found(.conntrackList): !Self.prefersNDJSON(request.accept)
        case .found(.ports): true
        default: false
        }
    }

    func respond(to request: APIRequest) async -> APIResponse {
        do {
            return try await route(request)
        } catch {
            return Self.errorResponse(error)
        }
    }

    private func route(_ request: APIRequest) async throws -> APIResponse {
        let route: Route
        switch match(method: request.method, path: request.path) {
        case .notFound where scope == .metrics:
            throw APIError.notFound("no such path: \(request.path) (this listener serves /metrics and /healthz only)")
        case .notFound:
            throw APIError.notFound("no such path: \(request.path) (the API lives under /v1; see docs/api/openapi.yaml)")
        case .methodNotAllowed(let allowed):
            throw MethodNotAllowed(method: request.method, path: request.path, allowed: allowed)
        case .found(let found):
            route = found
        }
        if route.changesState && !request.peer.isRoot {
            throw APIError.forbidden("\(route.method.rawValue) \(route.path) changes state and needs uid 0; this connection's peer is uid \(request.peer.uid)")
        }
        switch route {
        case .healthz:
            _ = try QueryParameters(request.query, allowed: [])
            let (health, status) = handlers.healthz()
            return try .json(health, status: status)
        case .status:
            _ = try QueryParameters(request.query, allowed: [])
            let handlers = self.handlers
            return try await handlers.sharedStatus.value { try .json(await handlers.statusResponse()) }
        case .ipmasq:
            _ = try QueryParameters(request.query, allowed: [])
            return try .json(await handlers.ipmasq())
        case .config:
            _ = try QueryParameters(request.query, allowed: [])
            return try .json(handlers.configResponse())
        case .conntrackList:
            let query = try QueryParameters(request.query, allowed: ConntrackFilter.parameterNames + ConntrackPaging.parameterNames)
            let filter = try ConntrackFilter(query: query)
            let paging = try ConntrackPaging(query: query)
            if Self.prefersNDJSON(request.accept) {
                // Check the cursor before the 200 goes out.
                _ = try paging.cursor.map { cursor throws(APIError) in try ConntrackCursor(cursor) }
                let handlers = self.handlers
                return .stream(contentType: MediaType.ndjson) { writer in
                    try await handlers.conntrackStream(filter: filter, paging: paging, to: writer)
                }
            }
            return try .json(await handlers.conntrackPage(filter: filter, paging: paging))
        case .conntrackFlush:
            let query = try QueryParameters(request.query, allowed: ConntrackFilter.parameterNames)
            return try .json(await handlers.conntrackFlush(filter: ConntrackFilter(query: query)))
        case .explain:
            let query = try QueryParameters(request.query, allowed: ExplainQuery.parameterNames)
            return try .json(await handlers.explain(ExplainQuery(query: query)))
        case .events:
            let query = try EventsQuery(query: QueryParameters(request.query, allowed: EventsQuery.parameterNames))
            guard handlers.events.subscribers < EventHub.maxSubscribers else {
                throw APIError.unavailable("too many event subscribers (\(EventHub.maxSubscribers)); try again when one has gone")
            }
            let handlers = self.handlers
            return .stream(contentType: MediaType.ndjson) { writer in
                try await handlers.eventStream(query, to: writer)
            }
        case .ports:
            let query = try PortsQuery(query: QueryParameters(request.query, allowed: PortsQuery.parameterNames))
            return try .json(await handlers.ports(query))
        case .metrics:
            // Query parameters are ignored, as exporters do: a scrape config's `params` must not
            // fail every scrape.
            let handlers = self.handlers
            return try await handlers.sharedMetrics.value {
                .body(status: 200, contentType: MediaType.prometheus, ByteBuffer(string: try await handlers.metrics()))
            }
        }
    }

    /// Content negotiation for `GET /v1/conntrack`, the one endpoint with two media types: NDJSON
    /// when the Accept header names it with a q-value above 0 and no lower than the one it gives
    /// JSON, otherwise JSON (the answer without an Accept header, to `*/*`, and when the header
    /// finds neither acceptable: RFC 9110 12.5.1 lets a server answer its default then).
    static func prefersNDJSON(_ accept: String?) -> Bool {
        guard let accept else { return false }
        let ranges = MediaRange.parse(accept)
        guard let ndjson = MediaRange.quality(of: MediaType.ndjson, in: ranges, namedOnly: true), ndjson > 0 else { return false }
        return ndjson >= MediaRange.quality(of: MediaType.json, in: ranges) ?? 0
    }

    /// The one place an error becomes a status and a `{"message": ...}` body.
    static func errorResponse(_ error: Error) -> APIResponse {
        let apiError: APIError
        var headers: [(String, String)] = []
        switch error {
        case let e as APIError:
            apiError = e
        case let e as MethodNotAllowed:
            apiError = .methodNotAllowed("\(e.method) is not allowed on \(e.path) (allowed: \(e.allowed.joined(separator: ", ")))")
            headers.append(("Allow", e.allowed.joined(separator: ", ")))
        case let e as BPFError:
            apiError = .internalError("reading the datapath failed: \(e)")
        default:
            apiError = .internalError("internal error: \(error)")
        }
        var buffer = ByteBuffer(bytes: (try? APIJSON.encoder().encode(apiError)) ?? Data(#"{"message":"internal error"}"#.utf8))
        buffer.writeInteger(UInt8(ascii: "\n"))
        return .body(status: apiError.status, contentType: MediaType.json, buffer, headers: headers)
    }
}

/// One element of an Accept header (RFC 9110 12.5.1): a media range and its q-value.
struct MediaRange: Equatable {
    /// Lowercased, parameters dropped: `application/json`, `application/*` or `*/*`.
    var range: String
    /// 0 to 1; 0 is "not acceptable" (RFC 9110 12.4.2).
    var q: Double

    /// The elements of an Accept header. One whose q-value is malformed is left out.
    static func parse(_ header: String) -> [MediaRange] {
        header.split(separator: ",").compactMap { element in
            let parts = element.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
            guard let range = parts.first?.lowercased(), !range.isEmpty else { return nil }
            var q = 1.0
            // Media type parameters come before q; accept extensions after it are ignored. The
            // weight is `q=VALUE`, no space around the `=` (RFC 9110 12.4.2): `q = 0.5` is malformed.
            let isWeight = { (part: String) in part.split(separator: "=", maxSplits: 1).first?.trimmingCharacters(in: .whitespaces).lowercased() == "q" }
            if let weight = parts.dropFirst().first(where: isWeight) {
                guard weight.lowercased().hasPrefix("q=") else { return nil }
                let text = weight.dropFirst(2)
                guard text.wholeMatch(of: /0(\.[0-9]{0,3})?|1(\.0{0,3})?/) != nil, let value = Double(text) else { return nil }
                q = value
            }
            return MediaRange(range: range, q: q)
        }
    }

    /// How specifically this range names `mediaType` (lowercase): 2 as itself, 1 as `type/*`,
    /// 0 as `*/*`; nil when it does not match.
    func specificity(for mediaType: String) -> Int? {
        if range == mediaType { return 2 }
        if range == "*/*" { return 0 }
        if range.hasSuffix("/*"), mediaType.hasPrefix(range.dropLast()) { return 1 }
        return nil
    }

    /// The q-value `ranges` give `mediaType`: that of the most specific range matching it (the
    /// highest of equally specific ones); nil when none matches, or none names it itself when
    /// `namedOnly`.
    static func quality(of mediaType: String, in ranges: [MediaRange], namedOnly: Bool = false) -> Double? {
        ranges.compactMap { range in
            range.specificity(for: mediaType).flatMap { $0 == 2 || !namedOnly ? ($0, range.q) : nil }
        }.max { $0 < $1 }?.1
    }
}
