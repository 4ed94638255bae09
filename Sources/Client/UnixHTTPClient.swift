import API
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// Why a request to masqd failed, as the one line the user reads.
struct ClientError: Error, CustomStringConvertible {
    var description: String
}

/// HTTP/1.1 to masqd over its Unix socket: one connection per request, SwiftNIO's HTTP client
/// codec, responses decoded into the API's types or streamed line by line.
struct UnixHTTPClient: Sendable {
    let socketPath: String

    typealias Connection = NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>

    /// GET (or DELETE) a JSON endpoint and decode its body as `T`. Returns the raw body too,
    /// for `-o json`.
    func request<T: Decodable>(_ route: Route, query: [(String, String)] = [], as type: T.Type = T.self) async throws -> (T, Data) {
        let body = try await fetch(route, query: query)
        do {
            return (try APIJSON.decoder().decode(T.self, from: body), body)
        } catch {
            throw ClientError(description: "masqd at \(socketPath) answered \(route.path) with a body this client cannot read: \(error)")
        }
    }

    /// The raw body of a JSON (or text) endpoint with a 2xx status.
    func fetch(_ route: Route, query: [(String, String)] = []) async throws -> Data {
        var body = Data()
        try await exchange(route, query: query, accept: MediaType.json) { chunk in
            body.append(contentsOf: chunk.readableBytesView)
        }
        return body
    }

    /// masqd's verdict on itself (`GET /v1/healthz`), also when it answers 503, with the HTTP
    /// status: a Failure comes with 503, and the verdict is the answer, not an error.
    func health() async throws -> (health: HealthResponse, httpStatus: UInt, raw: Data) {
        var body = Data()
        let status = try await exchange(.healthz, query: [], accept: MediaType.json, alsoAccepting: [503]) { chunk in
            body.append(contentsOf: chunk.readableBytesView)
        }
        do {
            return (try APIJSON.decoder().decode(HealthResponse.self, from: body), status, body)
        } catch {
            // A 503 that is not a verdict (e.g. an API error's message) is reported as one.
            if let message = try? APIJSON.decoder().decode(APIError.self, from: body).message {
                throw ClientError(description: "\(message) (HTTP \(status))")
            }
            throw ClientError(description: "masqd at \(socketPath) answered \(Route.healthz.path) (HTTP \(status)) with a body this client cannot read: \(error)")
        }
    }

    /// Streams an NDJSON endpoint, calling `line` for each line as it arrives (never buffering
    /// more than one partial line) and `chunkEnd` once the lines of a chunk are read, and at the
    /// end. Throws if the stream is cut before its end.
    func streamLines(_ route: Route, query: [(String, String)] = [], _ line: (Data) throws -> Void,
                     chunkEnd: () throws -> Void = {}) async throws {
        // The start of a line cut by the chunk's end.
        var pending = Data()
        try await exchange(route, query: query, accept: MediaType.ndjson) { chunk in
            try chunk.withUnsafeReadableBytes { bytes in
                var start = 0
                while let newline = bytes[start...].firstIndex(of: UInt8(ascii: "\n")) {
                    if pending.isEmpty {
                        if newline > start { try line(Data(bytes[start..<newline])) }
                    } else {
                        pending.append(contentsOf: bytes[start..<newline])
                        try line(pending)
                        pending.removeAll(keepingCapacity: true)
                    }
                    start = newline + 1
                }
                pending.append(contentsOf: bytes[start...])
            }
            try chunkEnd()
        }
        if !pending.isEmpty { try line(pending) }
        try chunkEnd()
    }

    /// One request: connects, sends, hands each body chunk of a 2xx (or `alsoAccepting`) answer to
    /// `body` and returns its status; any other answer becomes a ClientError carrying the API's
    /// message.
    @discardableResult
    private func exchange(_ route: Route, query: [(String, String)], accept: String,
                          alsoAccepting: [UInt] = [],
                          body: (ByteBuffer) throws -> Void) async throws -> UInt {
        let connection: Connection
        do {
            connection = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(5))
                .connect(unixDomainSocketPath: socketPath) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        return try Connection(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw ClientError(description: "cannot reach masqd at \(socketPath): \(Self.reason(error)) (is masqd running? --socket or MASQ_SOCKET picks another socket)")
        }
        let uri = query.isEmpty ? route.path : route.path + "?" + QueryParameters.encode(query)
        return try await connection.executeThenClose { inbound, outbound in
            var headers = HTTPHeaders()
            headers.add(name: "Host", value: "masqd")
            headers.add(name: "Accept", value: accept)
            headers.add(name: "Connection", value: "close")
            headers.add(name: "User-Agent", value: "masq-client/\(masqVersion)")
            let method: HTTPMethod = route.method == .delete ? .DELETE : .GET
            // One write: masqd may answer (and shut its side) as soon as it has parsed the head.
            try await outbound.write(contentsOf: [.head(HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: headers)),
                                                  .end(nil)])

            var status: HTTPResponseStatus?
            var errorBody = ByteBuffer()
            var complete = false
            let answered = { (code: UInt) in (200..<300).contains(code) || alsoAccepting.contains(code) }
            for try await part in inbound {
                switch part {
                case .head(let head):
                    status = head.status
                case .body(let chunk):
                    if let status, answered(status.code) {
                        try body(chunk)
                    } else {
                        var chunk = chunk
                        errorBody.writeBuffer(&chunk)
                    }
                case .end:
                    complete = true
                }
                if complete { break }
            }
            guard let status else {
                throw ClientError(description: "masqd at \(socketPath) closed the connection without answering \(route.path)")
            }
            guard answered(status.code) else {
                let message = (try? APIJSON.decoder().decode(APIError.self, from: Data(errorBody.readableBytesView)))?.message
                    ?? String(buffer: errorBody)
                throw ClientError(description: "\(message) (HTTP \(status.code))")
            }
            guard complete else {
                throw ClientError(description: "the answer from masqd at \(socketPath) was cut short (the daemon stopped or failed mid-stream)")
            }
            return status.code
        }
    }

    private static func reason(_ error: Error) -> String {
        if let e = error as? IOError { return String(cString: strerror(e.errnoCode)) }
        return "\(error)"
    }
}
