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
