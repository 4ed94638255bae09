import API
import Foundation
import NIOCore

/// A `ConntrackEntry` as one NDJSON line, written straight into a `ByteBuffer`: byte for byte
/// what `APIJSON.encoder()` makes of it (keys sorted, nil values left out, `/` unescaped,
/// numbers as Foundation spells them), at a small fraction of its cost. A dump of a million
/// flows is a million of these; through Codable they took most of the stream's time.
/// StreamingTests holds the two encodings equal.
struct ConntrackNDJSON {
    /// Strings the entries repeat (device names, enum values), encoded once.
    private var strings = EncodedStrings()

    mutating func write(_ e: ConntrackEntry, to out: inout ByteBuffer) {
        let device = e.device.map { strings[$0] }
        let family = strings[e.family.rawValue], kind = strings[e.kind.rawValue]
        let proto = strings[e.proto.rawValue], state = strings[e.state.rawValue]
        // The fixed part of a line is under 600 bytes (IPv6 addresses, 20-digit counters).
        let bound = 1024 + (device?.count ?? 0) + family.count + kind.count + proto.count + state.count
        out.writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { raw in
            var w = LineWriter(raw.baseAddress!)
            w.put(#"{"ageSeconds":"#)
            w.put(e.ageSeconds)
            if let device {
                w.put(#","device":"#)
                w.put(device)
            }
            w.put(#","expiresInSeconds":"#)
            w.put(e.expiresInSeconds)
            w.put(#","family":"#)
            w.put(family)
            w.put(#","ifindex":"#)
            w.put(UInt64(e.ifindex))
            w.put(#","kind":"#)
            w.put(kind)
            w.put(#","original":"#)
            w.put(e.original)
            w.put(#","originalCounters":"#)
            w.put(e.originalCounters)
            w.put(#","protocol":"#)
            w.put(proto)
            if let reply = e.replyCounters {
                w.put(#","replyCounters":"#)
                w.put(reply)
            }
            w.put(#","state":"#)
            w.put(state)
            w.put(#","translated":"#)
            w.put(e.translated)
            w.put("}\n")
            return w.count
        }
    }
}
