import Foundation

/// The API's one JSON configuration, shared by daemon and client: camelCase keys as the types
/// spell them, ISO 8601 dates, and `/` left unescaped (CIDRs contain it).
public enum APIJSON {
    public static func encoder(pretty: Bool = false) -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty
            ? [.withoutEscapingSlashes, .sortedKeys, .prettyPrinted]
            : [.withoutEscapingSlashes, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }

    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}

/// A string-valued enum that decodes values it does not know as `unknown`, so a newer daemon
/// can add a value without breaking an older client.
public protocol OpenStringEnum: RawRepresentable<String>, Codable, Sendable {
    static var unknown: Self { get }
}

extension OpenStringEnum {
    public init(from decoder: Decoder) throws {
        let raw = try decoder.singleValueContainer().decode(String.self)
        self = Self(rawValue: raw) ?? .unknown
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}
