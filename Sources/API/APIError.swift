/// The body of every error response: `{"message": "..."}`. The HTTP status travels beside it
/// (the response's status line); `status` is not part of the JSON.
public struct APIError: Error, Codable, Sendable, Equatable, CustomStringConvertible {
    /// The HTTP status code this error is answered with.
    public var status: Int
    /// One sentence saying what is wrong and, where it helps, what to send instead.
    public var message: String

    public init(status: Int, _ message: String) {
        self.status = status
        self.message = message
    }

    private enum CodingKeys: String, CodingKey { case message }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        message = try container.decode(String.self, forKey: .message)
        status = 0
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(message, forKey: .message)
    }

    public var description: String { message }

    /// 400: a query parameter or the request itself is malformed.
    public static func badRequest(_ message: String) -> APIError { APIError(status: 400, message) }
    /// 403: the endpoint changes state and the peer is not uid 0.
    public static func forbidden(_ message: String) -> APIError { APIError(status: 403, message) }
    /// 404: no such path.
    public static func notFound(_ message: String) -> APIError { APIError(status: 404, message) }
    /// 405: the path exists but not with this method.
    public static func methodNotAllowed(_ message: String) -> APIError { APIError(status: 405, message) }
    /// 413: the request body is larger than the server accepts.
    public static func payloadTooLarge(_ message: String) -> APIError { APIError(status: 413, message) }
    /// 431: the request's header section is larger than the server accepts.
    public static func headersTooLarge(_ message: String) -> APIError { APIError(status: 431, message) }
    /// 500: the daemon failed to answer (a map could not be read, ...).
    public static func internalError(_ message: String) -> APIError { APIError(status: 500, message) }
    /// 503: the daemon cannot answer this now (a connection beyond the connection limits may
    /// ask healthz only).
    public static func unavailable(_ message: String) -> APIError { APIError(status: 503, message) }
}
