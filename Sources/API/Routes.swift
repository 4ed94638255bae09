/// Every endpoint of the control API: method and path. The server routes on these and the
/// client builds its requests from them, so the two cannot disagree on a path.
public enum Route: CaseIterable, Sendable {
    case healthz
    case status
    case ipmasq
    case conntrackList
    case conntrackFlush
    case config
    case explain
    case events
    case ports
    case metrics

    public enum Method: String, Sendable {
        case get = "GET"
        case delete = "DELETE"
    }

    public var method: Method {
        switch self {
        case .conntrackFlush: return .delete
        default: return .get
        }
    }

    public var path: String {
        switch self {
        case .healthz: return "/v1/healthz"
        case .status: return "/v1/status"
        case .ipmasq: return "/v1/ipmasq"
        case .conntrackList, .conntrackFlush: return "/v1/conntrack"
        case .config: return "/v1/config"
        case .explain: return "/v1/explain"
        case .events: return "/v1/events"
        case .ports: return "/v1/ports"
        case .metrics: return "/metrics"
        }
    }

    /// Whether the endpoint changes state: such endpoints need peer uid 0.
    public var changesState: Bool { method != .get }

    /// The route for a method and path; nil when the path is unknown (404). A known path with
    /// another method is `.methodNotAllowed` with the methods it has (405), HEAD among them
    /// where GET is.
    public static func match(method: String, path: String) -> Match {
        let candidates = allCases.filter { $0.path == path }
        guard !candidates.isEmpty else { return .notFound }
        if let route = candidates.first(where: { $0.method.rawValue == method }) { return .found(route) }
        // HEAD is answered like GET without the body (NIO's encoder drops it).
        if method == "HEAD", let route = candidates.first(where: { $0.method == .get }) { return .found(route) }
        return .methodNotAllowed(allowed: candidates.flatMap { $0.method == .get ? ["GET", "HEAD"] : [$0.method.rawValue] })
    }

    public enum Match: Equatable, Sendable {
        case found(Route)
        case notFound
        case methodNotAllowed(allowed: [String])
    }
}

/// The media types the API speaks.
public enum MediaType {
    public static let json = "application/json"
    /// One JSON object a line; `GET /v1/conntrack` streams entries this way when asked, and
    /// `GET /v1/events` always.
    public static let ndjson = "application/x-ndjson"
    /// Prometheus text exposition format, version 0.0.4.
    public static let prometheus = "text/plain; version=0.0.4; charset=utf-8"
}
