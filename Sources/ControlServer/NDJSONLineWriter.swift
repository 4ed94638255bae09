import API
import Foundation

/// The JSON of strings a stream repeats (device names, enum values), as the API encoder writes
/// them (escapes and all), each encoded by it once.
struct EncodedStrings {
    private var cache: [String: [UInt8]] = [:]

    subscript(_ s: String) -> [UInt8] {
        mutating get {
            if let bytes = cache[s] { return bytes }
            // A top-level string fragment: the JSON string itself.
            let bytes = (try? APIJSON.encoder().encode(s)).map(Array.init) ?? Array("\"\"".utf8)
            cache[s] = bytes
            return bytes
        }
    }
}

/// Writes one line into memory reserved for it, with plain stores: no per-byte bounds or
/// capacity checks (the caller reserved enough), which keeps even a debug build's stream fast.
/// Each `put` writes a value as `APIJSON.encoder()` does.
struct LineWriter {
    let base: UnsafeMutableRawPointer
    var count = 0

    init(_ base: UnsafeMutableRawPointer) {
        self.base = base
    }

    mutating func put(_ text: StaticString) {
        (base + count).copyMemory(from: text.utf8Start, byteCount: text.utf8CodeUnitCount)
        count += text.utf8CodeUnitCount
    }

    mutating func put(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { (base + count).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        count += bytes.count
    }

    mutating func put(byte: UInt8) {
        base.storeBytes(of: byte, toByteOffset: count, as: UInt8.self)
        count += 1
    }

    /// A whole number in decimal.
    mutating func put(_ value: UInt64) {
        var digits = 1
        var rest = value / 10
        while rest > 0 {
            digits += 1
            rest /= 10
        }
        put(digits: value, digits)
    }

    /// A whole number with its sign.
    mutating func put(_ value: Int) {
        if value < 0 { put(byte: UInt8(ascii: "-")) }
        put(UInt64(value.magnitude))
    }

    mutating func put(_ value: Bool) {
        if value { put("true") } else { put("false") }
    }

    /// Whether `put(iso8601:)` spells date: from 1970 to 9999.
    static func spellsISO8601(_ date: Date) -> Bool {
        (0..<253_402_300_800).contains(date.timeIntervalSince1970)
    }

    /// A date as the encoder's `.iso8601` strategy writes it, "2026-12-02T03:54:33Z": whole
    /// seconds, UTC. Only for a date `spellsISO8601` takes.
    mutating func put(iso8601 date: Date) {
        let seconds = date.timeIntervalSince1970.rounded(.down)
        let total = Int(seconds)
        let (days, secondOfDay) = total.quotientAndRemainder(dividingBy: 86_400)
        // Civil date from days since 1970-01-01 (proleptic Gregorian, eras of 400 years).
        let z = days + 719_468
        let era = z / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        put(byte: UInt8(ascii: "\""))
        put(digits: UInt64(year), 4)
        put(byte: UInt8(ascii: "-"))
        put(digits: UInt64(month), 2)
        put(byte: UInt8(ascii: "-"))
        put(digits: UInt64(day), 2)
        put(byte: UInt8(ascii: "T"))
        put(digits: UInt64(secondOfDay / 3600), 2)
        put(byte: UInt8(ascii: ":"))
        put(digits: UInt64(secondOfDay / 60 % 60), 2)
        put(byte: UInt8(ascii: ":"))
        put(digits: UInt64(secondOfDay % 60), 2)
        put("Z\"")
    }

    /// value in exactly `width` decimal digits, zero-padded.
    private mutating func put(digits value: UInt64, _ width: Int) {
        var v = value
        for i in stride(from: count + width - 1, through: count, by: -1) {
            base.storeBytes(of: UInt8(truncatingIfNeeded: 48 + v % 10), toByteOffset: i, as: UInt8.self)
            v /= 10
        }
        count += width
    }

    /// A finite Double as Foundation's JSON encoder writes it: Swift's shortest round-trip
    /// `description`, without the ".0" of a whole number.
    mutating func put(_ value: Double) {
        var text = value.description
        text.withUTF8 { utf8 in
            let n = utf8.count >= 2 && utf8[utf8.count - 2] == UInt8(ascii: ".") && utf8[utf8.count - 1] == UInt8(ascii: "0")
                ? utf8.count - 2 : utf8.count
            (base + count).copyMemory(from: utf8.baseAddress!, byteCount: n)
            count += n
        }
    }

    mutating func put(_ t: FlowTuple) {
        put(#"{"dport":"#)
        put(UInt64(t.dport))
        put(#","dst":"#)
        put(t.dst)
        put(#","sport":"#)
        put(UInt64(t.sport))
        put(#","src":"#)
        put(t.src)
        put(byte: UInt8(ascii: "}"))
    }

    mutating func put(_ c: FlowCounters) {
        put(#"{"bytes":"#)
        put(c.bytes)
        put(#","packets":"#)
        put(c.packets)
        put(byte: UInt8(ascii: "}"))
    }

    /// An address as a JSON string (IPv4 without building its description).
    mutating func put(_ address: IPAddress) {
        put(byte: UInt8(ascii: "\""))
        switch address {
        case .v4(let a):
            put(UInt64(a.bytes.0))
            put(byte: UInt8(ascii: "."))
            put(UInt64(a.bytes.1))
            put(byte: UInt8(ascii: "."))
            put(UInt64(a.bytes.2))
            put(byte: UInt8(ascii: "."))
            put(UInt64(a.bytes.3))
        case .v6(let a):
            put(a)
        }
        put(byte: UInt8(ascii: "\""))
    }

    /// An IPv6 address as inet_ntop writes it (`description`), without building its text: RFC
    /// 5952's lowercase hex groups without leading zeros, the longest run of two or more zero
    /// groups (the first of equal runs) as "::". An address whose first 80 bits are zero may
    /// take inet_ntop's dotted forms (::ffff:a.b.c.d, ::a.b.c.d) and goes through `description`.
    /// A million-flow IPv6 dump spent most of its time building those texts.
    mutating func put(_ a: IPv6Address) {
        let b = a.bytes
        func group(_ g: Int) -> UInt16 { UInt16(b[2 * g]) << 8 | UInt16(b[2 * g + 1]) }
        var zeros = (start: -1, count: 0)
        var run = -1
        for g in 0..<8 {
            guard group(g) == 0 else {
                run = -1
                continue
            }
            if run < 0 { run = g }
            if g - run + 1 > zeros.count { zeros = (run, g - run + 1) }
        }
        if zeros.count < 2 { zeros = (-1, 0) }
        if zeros.start == 0 && zeros.count >= 5 {
            put(Array(a.description.utf8))
            return
        }
        for g in 0..<8 {
            if g >= zeros.start && g < zeros.start + zeros.count {
                if g == zeros.start { put(byte: UInt8(ascii: ":")) }
                continue
            }
            if g > 0 { put(byte: UInt8(ascii: ":")) }
            let word = group(g)
            for shift in stride(from: 12, through: 0, by: -4) where word >> UInt16(shift) != 0 || shift == 0 {
                put(byte: Self.hexDigits[Int(word >> UInt16(shift) & 0xf)])
            }
        }
        if zeros.count > 0 && zeros.start + zeros.count == 8 { put(byte: UInt8(ascii: ":")) }
    }

    private static let hexDigits = Array("0123456789abcdef".utf8)
}
