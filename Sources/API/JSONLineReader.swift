import Foundation
import NetworkTypes

// The NDJSON streams' lines read in one pass. Foundation's JSONDecoder takes about 25 us a
// conntrack line and 10-20 us an event (generic metadata lookups, retain/release, a dictionary
// per object): most of what `masq-client conntrack list` spends on a large table, and what held
// `masq-client conntrack events` to a few thousand events a second. A line is read here instead:
// any key order, whitespace, escapes, null for an absent value, unknown keys skipped. A line
// this reader does not take (a key missing, a value of another type or out of range, JSON it
// cannot read) goes to `decoder`, which decides as before and words the error.

extension ConntrackEntry {
    /// One line of `GET /v1/conntrack`'s NDJSON.
    public init(ndjsonLine line: Data, decoder: JSONDecoder) throws {
        self = try JSONLineReader.read(line, decoder: decoder) { $0.entry() }
    }
}

extension FlowEvent {
    /// One line of `GET /v1/events`.
    public init(ndjsonLine line: Data, decoder: JSONDecoder) throws {
        self = try JSONLineReader.read(line, decoder: decoder) { $0.event() }
    }
}

/// A single-pass reader of the API's JSON objects. Every method returns nil where the input
/// leaves the shape it reads, and the caller then falls back to JSONDecoder.
struct JSONLineReader {
    private let bytes: UnsafeRawBufferPointer
    private var i = 0

    /// Nesting of unknown values skipped, beyond which the line is left to JSONDecoder.
    private static let maxDepth = 32

    /// The value `body` reads from line, else JSONDecoder's.
    static func read<T: Decodable>(_ line: Data, decoder: JSONDecoder, _ body: (inout JSONLineReader) -> T?) throws -> T {
        if let value = line.withUnsafeBytes({ read($0, body) }) { return value }
        return try decoder.decode(T.self, from: line)
    }

    /// The value `body` reads when nothing but whitespace follows it; nil when the reader does
    /// not take the line.
    static func read<T>(_ bytes: UnsafeRawBufferPointer, _ body: (inout JSONLineReader) -> T?) -> T? {
        var reader = JSONLineReader(bytes: bytes)
        guard let value = body(&reader) else { return nil }
        reader.skipSpace()
        return reader.i == bytes.count ? value : nil
    }

    private init(bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    mutating func entry() -> ConntrackEntry? {
        var family: IPFamily?, proto: L4Protocol?, kind: ConntrackEntry.Kind?, state: FlowState?
        var original: FlowTuple?, translated: FlowTuple?
        var originalCounters: FlowCounters?, replyCounters: FlowCounters?
        var age: Double?, expires: Double?, device: String?, ifindex: UInt32?
        let read = object { reader, key in
            switch key {
            case "family": family = reader.string().map { IPFamily(rawValue: $0) ?? .unknown }; return family != nil
            case "protocol": proto = reader.string().map { L4Protocol(rawValue: $0) ?? .unknown }; return proto != nil
            case "kind": kind = reader.string().map { ConntrackEntry.Kind(rawValue: $0) ?? .unknown }; return kind != nil
            case "state": state = reader.string().map { FlowState(rawValue: $0) ?? .unknown }; return state != nil
            case "original": original = reader.tuple(); return original != nil
            case "translated": translated = reader.tuple(); return translated != nil
            case "originalCounters": originalCounters = reader.counters(); return originalCounters != nil
            case "replyCounters":
                if reader.null() { replyCounters = nil; return true }
                replyCounters = reader.counters()
                return replyCounters != nil
            case "ageSeconds": age = reader.double(); return age != nil
            case "expiresInSeconds": expires = reader.double(); return expires != nil
            case "device":
                if reader.null() { device = nil; return true }
                device = reader.string()
                return device != nil
            case "ifindex": ifindex = reader.unsigned(max: UInt64(UInt32.max)).map(UInt32.init); return ifindex != nil
            default: return reader.skipValue(depth: 0)
            }
        }
        guard read, let family, let proto, let kind, let state, let original, let translated,
              let originalCounters, let age, let expires, let ifindex else { return nil }
        return ConntrackEntry(family: family, proto: proto, kind: kind, original: original, translated: translated,
                              state: state, ageSeconds: age, expiresInSeconds: expires,
                              originalCounters: originalCounters, replyCounters: replyCounters, device: device,
                              ifindex: ifindex)
    }

    mutating func event() -> FlowEvent? {
        var event = FlowEvent(type: .unknown)
        var type: FlowEvent.EventType?
        // An optional member: null is absent, as for JSONDecoder's decodeIfPresent.
        func optional<T>(_ reader: inout JSONLineReader, _ value: inout T?, _ read: (inout JSONLineReader) -> T?) -> Bool {
            if reader.null() { value = nil; return true }
            value = read(&reader)
            return value != nil
        }
        let read = object { reader, key in
            switch key {
            case "type": type = reader.string().map { FlowEvent.EventType(rawValue: $0) ?? .unknown }; return type != nil
            case "time": return optional(&reader, &event.time) { $0.iso8601() }
            case "family": return optional(&reader, &event.family) { $0.string().map { IPFamily(rawValue: $0) ?? .unknown } }
            case "protocol": return optional(&reader, &event.proto) { $0.string().map { L4Protocol(rawValue: $0) ?? .unknown } }
            case "kind": return optional(&reader, &event.kind) { $0.string().map { ConntrackEntry.Kind(rawValue: $0) ?? .unknown } }
            case "original": return optional(&reader, &event.original) { $0.tuple() }
            case "translated": return optional(&reader, &event.translated) { $0.tuple() }
            case "device": return optional(&reader, &event.device) { $0.string() }
            case "ifindex": return optional(&reader, &event.ifindex) { $0.unsigned(max: UInt64(UInt32.max)).map(UInt32.init) }
            case "keptPort": return optional(&reader, &event.keptPort) { $0.bool() }
            case "candidates": return optional(&reader, &event.candidates) { $0.integer() }
            case "reason": return optional(&reader, &event.reason) { $0.string() }
            case "direction": return optional(&reader, &event.direction) { $0.string().map { FlowEvent.Direction(rawValue: $0) ?? .unknown } }
            case "state": return optional(&reader, &event.state) { $0.string().map { FlowState(rawValue: $0) ?? .unknown } }
            case "count": return optional(&reader, &event.count) { $0.integer() }
            default: return reader.skipValue(depth: 0)
            }
        }
        guard read, let type else { return nil }
        event.type = type
        return event
    }

    private mutating func tuple() -> FlowTuple? {
        var src: IPAddress?, dst: IPAddress?, sport: UInt16?, dport: UInt16?
        let read = object { reader, key in
            switch key {
            case "src": src = reader.string().flatMap { IPAddress($0) }; return src != nil
            case "dst": dst = reader.string().flatMap { IPAddress($0) }; return dst != nil
            case "sport": sport = reader.unsigned(max: UInt64(UInt16.max)).map(UInt16.init); return sport != nil
            case "dport": dport = reader.unsigned(max: UInt64(UInt16.max)).map(UInt16.init); return dport != nil
            default: return reader.skipValue(depth: 1)
            }
        }
        guard read, let src, let sport, let dst, let dport else { return nil }
        return FlowTuple(src: src, sport: sport, dst: dst, dport: dport)
    }

    private mutating func counters() -> FlowCounters? {
        var packets: UInt64?, bytes: UInt64?
        let read = object { reader, key in
            switch key {
            case "packets": packets = reader.unsigned(max: .max); return packets != nil
            case "bytes": bytes = reader.unsigned(max: .max); return bytes != nil
            default: return reader.skipValue(depth: 1)
            }
        }
        guard read, let packets, let bytes else { return nil }
        return FlowCounters(packets: packets, bytes: bytes)
    }

    /// Reads an object, calling `member` with each key, positioned at its value, which `member`
    /// reads (or skips); a value it could not read ends the object as unread.
    private mutating func object(_ member: (inout JSONLineReader, String) -> Bool) -> Bool {
        guard take(UInt8(ascii: "{")) else { return false }
        if take(UInt8(ascii: "}")) { return true }
        repeat {
            guard let key = string(), take(UInt8(ascii: ":")), member(&self, key) else { return false }
        } while take(UInt8(ascii: ","))
        return take(UInt8(ascii: "}"))
    }

    private mutating func skipSpace() {
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x09 || bytes[i] == 0x0a || bytes[i] == 0x0d { i += 1 }
    }

    /// Takes `byte`, after any whitespace, if it comes next.
    private mutating func take(_ byte: UInt8) -> Bool {
        skipSpace()
        guard i < bytes.count, bytes[i] == byte else { return false }
        i += 1
        return true
    }

    private mutating func null() -> Bool { literal("null") }

    private mutating func literal(_ word: StaticString) -> Bool {
        skipSpace()
        let count = word.utf8CodeUnitCount
        guard bytes.count - i >= count,
              word.withUTF8Buffer({ $0.elementsEqual(bytes[i..<i + count]) }) else { return false }
        i += count
        return true
    }

    /// A JSON string: valid UTF-8, escapes decoded.
    private mutating func string() -> String? {
        guard take(UInt8(ascii: "\"")) else { return nil }
        let start = i
        var ascii = true
        while i < bytes.count, bytes[i] != UInt8(ascii: "\""), bytes[i] != UInt8(ascii: "\\"), bytes[i] >= 0x20 {
            ascii = ascii && bytes[i] < 0x80
            i += 1
        }
        guard i < bytes.count else { return nil }
        if bytes[i] == UInt8(ascii: "\"") {
            i += 1
            let text = UnsafeRawBufferPointer(rebasing: bytes[start..<i - 1])
            // ASCII, nearly every string here, is valid UTF-8 as it is: no generic validation.
            return ascii ? String(decoding: text, as: UTF8.self) : String(validating: text, as: UTF8.self)
        }
        // Escapes: the rest byte by byte.
        var text = Array(bytes[start..<i])
        while i < bytes.count {
            let byte = bytes[i]
            i += 1
            switch byte {
            case UInt8(ascii: "\""):
                return String(validating: text, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard i < bytes.count else { return nil }
                let escape = bytes[i]
                i += 1
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): text.append(escape)
                case UInt8(ascii: "b"): text.append(0x08)
                case UInt8(ascii: "f"): text.append(0x0c)
                case UInt8(ascii: "n"): text.append(0x0a)
                case UInt8(ascii: "r"): text.append(0x0d)
                case UInt8(ascii: "t"): text.append(0x09)
                case UInt8(ascii: "u"):
                    guard let scalar = unicodeEscape() else { return nil }
                    text.append(contentsOf: String(Character(scalar)).utf8)
                default: return nil
                }
            case 0..<0x20: return nil
            default: text.append(byte)
            }
        }
        return nil
    }

    /// The scalar of a `\u` escape (after the `u`), a surrogate pair's two escapes as one.
    private mutating func unicodeEscape() -> Unicode.Scalar? {
        guard let high = hex4() else { return nil }
        if (0xd800..<0xdc00).contains(high) {
            guard take(UInt8(ascii: "\\")), i < bytes.count, bytes[i] == UInt8(ascii: "u") else { return nil }
            i += 1
            guard let low = hex4(), (0xdc00..<0xe000).contains(low) else { return nil }
            return Unicode.Scalar(0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00))
        }
        return Unicode.Scalar(high)
    }

    private mutating func hex4() -> UInt32? {
        guard bytes.count - i >= 4 else { return nil }
        var value: UInt32 = 0
        for _ in 0..<4 {
            guard let digit = hexValue(bytes[i]) else { return nil }
            value = value << 4 | UInt32(digit)
            i += 1
        }
        return value
    }

    private func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// A whole number written in digits only, at most `max`.
    private mutating func unsigned(max: UInt64) -> UInt64? {
        skipSpace()
        let start = i
        var value: UInt64 = 0
        while i < bytes.count, bytes[i] >= UInt8(ascii: "0"), bytes[i] <= UInt8(ascii: "9") {
            let (times, o1) = value.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times.addingReportingOverflow(UInt64(bytes[i] - UInt8(ascii: "0")))
            guard !o1, !o2 else { return nil }
            value = sum
            i += 1
        }
        // A leading zero, a fraction or an exponent: JSONDecoder's call.
        guard i > start, bytes[start] != UInt8(ascii: "0") || i == start + 1, value <= max,
              i == bytes.count || !Self.continuesNumber(bytes[i]) else { return nil }
        return value
    }

    private static func continuesNumber(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: ".") || byte == UInt8(ascii: "e") || byte == UInt8(ascii: "E")
            || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
    }

    private mutating func bool() -> Bool? {
        if literal("true") { return true }
        return literal("false") ? false : nil
    }

    /// A whole number with an optional minus sign, within Int's range.
    private mutating func integer() -> Int? {
        skipSpace()
        let negative = i < bytes.count && bytes[i] == UInt8(ascii: "-")
        if negative { i += 1 }
        guard let magnitude = unsigned(max: negative ? UInt64(Int.max) + 1 : UInt64(Int.max)) else { return nil }
        return negative ? Int(truncatingIfNeeded: 0 &- magnitude) : Int(magnitude)
    }

    /// A date as the encoder's `.iso8601` strategy writes it, "2026-12-02T03:54:33Z", from 1970
    /// to 9999; any other spelling (an offset, fractions) or year is left to JSONDecoder.
    private mutating func iso8601() -> Date? {
        skipSpace()
        let start = i
        guard exactly(UInt8(ascii: "\"")), let year = digits(4), exactly(UInt8(ascii: "-")), let month = digits(2),
              exactly(UInt8(ascii: "-")), let day = digits(2), exactly(UInt8(ascii: "T")), let hour = digits(2),
              exactly(UInt8(ascii: ":")), let minute = digits(2), exactly(UInt8(ascii: ":")), let second = digits(2),
              exactly(UInt8(ascii: "Z")), exactly(UInt8(ascii: "\""))
        else {
            i = start
            return nil
        }
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
        let monthDays = month == 2 ? (leap ? 29 : 28) : (month == 4 || month == 6 || month == 9 || month == 11 ? 30 : 31)
        guard year >= 1970, (1...12).contains(month), (1...monthDays).contains(day), hour < 24, minute < 60, second < 60
        else { return nil }
        // Days since 1970-01-01 from the civil date (proleptic Gregorian, eras of 400 years).
        let y = month <= 2 ? year - 1 : year
        let era = y / 400, yearOfEra = y % 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let days = era * 146_097 + yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear - 719_468
        return Date(timeIntervalSince1970: Double(days * 86_400 + hour * 3600 + minute * 60 + second))
    }

    /// Takes `byte` if it comes next (no whitespace before it: inside a token).
    private mutating func exactly(_ byte: UInt8) -> Bool {
        guard i < bytes.count, bytes[i] == byte else { return false }
        i += 1
        return true
    }

    /// Exactly `count` decimal digits.
    private mutating func digits(_ count: Int) -> Int? {
        guard bytes.count - i >= count else { return nil }
        var value = 0
        for _ in 0..<count {
            guard bytes[i] >= UInt8(ascii: "0"), bytes[i] <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + Int(bytes[i] - UInt8(ascii: "0"))
            i += 1
        }
        return value
    }

    /// A JSON number, converted as the standard library converts its text.
    private mutating func double() -> Double? {
        guard let range = number() else { return nil }
        // Beyond Double's range JSONDecoder refuses the number; the text's conversion would be inf.
        return Double(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self))
            .flatMap { $0.isFinite ? $0 : nil }
    }

    /// The extent of a number in JSON's grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
    private mutating func number() -> Range<Int>? {
        skipSpace()
        let start = i
        func digits(_ reader: inout JSONLineReader) -> Int {
            let from = reader.i
            while reader.i < reader.bytes.count, reader.bytes[reader.i] >= UInt8(ascii: "0"),
                  reader.bytes[reader.i] <= UInt8(ascii: "9") { reader.i += 1 }
            return reader.i - from
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "-") { i += 1 }
        let intStart = i
        let whole = digits(&self)
        guard whole > 0, whole == 1 || bytes[intStart] != UInt8(ascii: "0") else { return nil }
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            i += 1
            guard digits(&self) > 0 else { return nil }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            guard digits(&self) > 0 else { return nil }
        }
        return start..<i
    }

    /// Skips a value of any type (a key this reader does not know), checking its grammar.
    private mutating func skipValue(depth: Int) -> Bool {
        skipSpace()
        guard i < bytes.count, depth < Self.maxDepth else { return false }
        switch bytes[i] {
        case UInt8(ascii: "\""): return string() != nil
        case UInt8(ascii: "{"): return object { reader, _ in reader.skipValue(depth: depth + 1) }
        case UInt8(ascii: "["):
            i += 1
            if take(UInt8(ascii: "]")) { return true }
            repeat {
                guard skipValue(depth: depth + 1) else { return false }
            } while take(UInt8(ascii: ","))
            return take(UInt8(ascii: "]"))
        case UInt8(ascii: "t"): return literal("true")
        case UInt8(ascii: "f"): return literal("false")
        case UInt8(ascii: "n"): return null()
        default: return number() != nil
        }
    }
}
