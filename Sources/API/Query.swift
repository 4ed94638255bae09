import Foundation

/// A request's query parameters, with typed readers that turn a bad value into a 400 naming the
/// parameter. Each parameter may appear once; unknown parameters are refused, so that a typo
/// never silently widens a DELETE.
public struct QueryParameters: Sendable, Equatable {
    public private(set) var items: [String: String]

    /// Parses `a=1&b=2` (percent-decoded; `+` stays `+`). `allowed` are the names the endpoint knows.
    public init(_ query: Substring?, allowed: [String]) throws(APIError) {
        items = [:]
        guard let query, !query.isEmpty else { return }
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = Self.percentDecode(parts[0]) else {
                throw .badRequest("query: '\(parts[0])' is not valid percent-encoding")
            }
            guard let value = Self.percentDecode(parts.count > 1 ? parts[1] : "") else {
                throw .badRequest("\(name): '\(parts[1])' is not valid percent-encoding")
            }
            guard allowed.contains(name) else {
                let known = allowed.isEmpty ? "this endpoint takes none" : "known: \(allowed.joined(separator: ", "))"
                throw .badRequest("\(name): unknown query parameter (\(known))")
            }
            guard items[name] == nil else { throw .badRequest("\(name): given more than once") }
            items[name] = value
        }
    }

    public init(items: [String: String]) {
        self.items = items
    }

    public subscript(name: String) -> String? { items[name] }

    /// The value converted by `parse`; nil when absent; 400 saying what was expected when `parse` fails.
    public func value<T>(_ name: String, expecting expected: String, _ parse: (String) -> T?) throws(APIError) -> T? {
        guard let text = items[name] else { return nil }
        guard let value = parse(text) else { throw .badRequest("\(name): '\(text)' is not valid (expected \(expected))") }
        return value
    }

    /// An address (a host prefix) or a CIDR.
    public func prefix(_ name: String) throws(APIError) -> IPPrefix? {
        guard let text = items[name] else { return nil }
        do {
            return try IPPrefix(text)
        } catch {
            throw .badRequest("\(name): \(error.description.replacingOccurrences(of: "is not a CIDR", with: "is not an address or CIDR"))")
        }
    }

    public func port(_ name: String) throws(APIError) -> UInt16? {
        try integer(name, in: 0...Int(UInt16.max), expecting: "a port number 0-65535").map { UInt16($0) }
    }

    /// A decimal number in `range`: digits only (no sign, no spaces), as the API documents them.
    public func integer(_ name: String, in range: ClosedRange<Int>, expecting expected: String) throws(APIError) -> Int? {
        try value(name, expecting: expected) { text in
            guard !text.isEmpty, text.utf8.count <= 18, text.utf8.allSatisfy({ (0x30...0x39).contains($0) }),
                  let number = Int(text), range.contains(number) else { return nil }
            return number
        }
    }

    public func address(_ name: String) throws(APIError) -> IPAddress? {
        try value(name, expecting: "an IPv4 or IPv6 address") { IPAddress($0) }
    }

    /// Encodes parameters for a request line (unreserved characters and `/`, `:` kept as they are).
    public static func encode(_ items: [(String, String)]) -> String {
        items.map { "\(escape($0.0))=\(escape($0.1))" }.joined(separator: "&")
    }

    /// Unreserved characters (RFC 3986), and `/` and `:` (CIDRs and IPv6 addresses read better).
    private static let kept = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/:")

    private static func escape(_ text: String) -> String {
        // Only invalid UTF-16 fails to encode, which a Swift String cannot hold.
        text.addingPercentEncoding(withAllowedCharacters: kept) ?? text
    }

    /// nil when `text` has a `%` without two hex digits, or decodes to invalid UTF-8.
    private static func percentDecode(_ text: Substring) -> String? {
        String(text).removingPercentEncoding
    }
}
