@preconcurrency import Glibc
import CLibbpf
import CMasq
import Foundation

/// A libbpf failure: the step that failed, the object it concerned and the errno.
public struct BPFError: Error, CustomStringConvertible, Equatable {
    public var step: String
    public var object: String
    public var errno: Int32

    public init(_ step: String, _ object: String, errno: Int32) {
        self.step = step
        self.object = object
        self.errno = errno
    }

    public var description: String {
        "\(step) \(object): \(String(cString: strerror(errno))) (errno \(errno))"
    }
}

/// The datapath object compiled into this binary by the BPFObjectPlugin.
public enum EmbeddedDatapath {
    public static let bytes: [UInt8] = {
        // The generated literal is base64 the build produced; failing to decode it is a build bug.
        guard let data = Data(base64Encoded: embeddedBPFObjectBase64, options: .ignoreUnknownCharacters)
        else { preconditionFailure("embedded BPF object is not valid base64") }
        return [UInt8](data)
    }()
}

/// An opened and loaded BPF object. Owns the libbpf handle; map and program fds stay valid as
/// long as it lives. Not Sendable: one owner (the `Datapath` actor, or a test) uses it.
public final class BPFObject {
    private let object: OpaquePointer
    /// Pinned maps whose shape (type, sizes, entries, flags) no longer matched this object and
    /// were unpinned so that new ones could be created; their old contents are gone unless the
    /// map was named in `keepReplaced` (then it is in `replacedMaps`).
    public private(set) var replacedPins: [String] = []
    /// The old maps of `keepReplaced` that were replaced, still open, for their contents to
    /// be carried over; `takeReplacedMaps` hands them over.
    private var replacedMaps: [String: ReplacedMap] = [:]

    /// Opens `bytes`, sizes maps per `maxEntries` (map name to entries), reuses or pins the
    /// maps marked for pinning under `pinRoot` (nil: nothing is pinned), and loads everything.
    /// A pinned map of `keepReplaced` that has to be replaced stays open in `replacedMaps`.
    public init(bytes: [UInt8], pinRoot: String?, maxEntries: [String: UInt32] = [:],
                keepReplaced: Set<String> = []) throws {
        guard let object = bytes.withUnsafeBytes({ buf in
            masq_object_open_mem(buf.baseAddress, buf.count, "masq", pinRoot)
        }) else {
            throw BPFError("open", "BPF object", errno: errno)
        }
        // From here on deinit closes the object, also when init throws.
        self.object = object
        for (name, entries) in maxEntries {
            guard let map = bpf_object__find_map_by_name(object, name) else {
                throw BPFError("find", "map \(name)", errno: ENOENT)
            }
            let err = bpf_map__set_max_entries(map, entries)
            if err != 0 {
                throw BPFError("size", "map \(name)", errno: -err)
            }
        }
        if pinRoot != nil {
            (replacedPins, replacedMaps) = Self.unpinIncompatible(object, keep: keepReplaced)
        }
        let err = bpf_object__load(object)
        if err != 0 {
            throw BPFError("load", "BPF object", errno: -err)
        }
    }

    /// libbpf refuses to reuse a pinned map whose definition differs (a new nat-max-entries, a
    /// newer layout). Such a pin is removed so the load creates a fresh map; the old map of a
    /// name in `keep` stays open.
    private static func unpinIncompatible(_ object: OpaquePointer, keep: Set<String>)
        -> ([String], [String: ReplacedMap])
    {
        var replaced: [String] = []
        var kept: [String: ReplacedMap] = [:]
        var map = bpf_object__next_map(object, nil)
        while let m = map {
            defer { map = bpf_object__next_map(object, m) }
            guard let path = bpf_map__pin_path(m) else { continue }
            let fd = bpf_obj_get(path)
            guard fd >= 0 else { continue }
            var info = bpf_map_info()
            var len = UInt32(MemoryLayout<bpf_map_info>.size)
            guard bpf_obj_get_info_by_fd(fd, &info, &len) == 0 else { close(fd); continue }
            if info.type != bpf_map__type(m).rawValue || info.key_size != bpf_map__key_size(m)
                || info.value_size != bpf_map__value_size(m) || info.max_entries != bpf_map__max_entries(m)
                || info.map_flags != bpf_map__map_flags(m)
            {
                unlink(path)
                let name = String(cString: bpf_map__name(m))
                replaced.append(name)
                if keep.contains(name) {
                    kept[name] = ReplacedMap(name: name, fd: fd, keySize: info.key_size, valueSize: info.value_size,
                                             maxEntries: info.max_entries)
                    continue
                }
            }
            close(fd)
        }
        return (replaced, kept)
    }

    deinit {
        bpf_object__close(object)
    }

    /// Hands the replaced maps of `keepReplaced` over to the caller and forgets them: each old
    /// map (a whole NAT table's memlock) is closed once the caller drops it, not when this
    /// object goes away.
    public func takeReplacedMaps() -> [String: ReplacedMap] {
        defer { replacedMaps = [:] }
        return replacedMaps
    }

    /// The map called `name`.
    public func map(_ name: String) throws -> BPFMap {
        guard let map = bpf_object__find_map_by_name(object, name) else {
            throw BPFError("find", "map \(name)", errno: ENOENT)
        }
        return BPFMap(name: name, fd: bpf_map__fd(map), maxEntries: bpf_map__max_entries(map))
    }

    /// The fd of the program whose function is called `name`.
    public func programFD(_ name: String) throws -> Int32 {
        guard let prog = bpf_object__find_program_by_name(object, name) else {
            throw BPFError("find", "program \(name)", errno: ENOENT)
        }
        return bpf_program__fd(prog)
    }

    /// The kernel's id of the program whose function is called `name`.
    public func programID(_ name: String) throws -> UInt32 {
        var id: UInt32 = 0
        let err = masq_prog_id(try programFD(name), &id)
        guard err == 0 else { throw BPFError("read the id of", "program \(name)", errno: -err) }
        return id
    }

    /// The pin paths that no longer hold this object's map (removed behind the daemon's back):
    /// a restart would start from empty maps.
    public func missingPins() -> [String] {
        pinnedMaps().filter { !Self.isPinned($0.fd, at: $0.path) }.map(\.path)
    }

    /// Pins again the maps whose pins are gone or hold another map (`missingPins`), making the
    /// directory if needed.
    public func repinMissing() throws {
        for (path, fd) in pinnedMaps() where !Self.isPinned(fd, at: path) {
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent,
                                                    withIntermediateDirectories: true)
            unlink(path)
            guard bpf_obj_pin(fd, path) == 0 else { throw BPFError("pin", "map \(path)", errno: errno) }
        }
    }

    /// Whether the pin at `path` is the map `fd`.
    private static func isPinned(_ fd: Int32, at path: String) -> Bool {
        let pinned = bpf_obj_get(path)
        guard pinned >= 0 else { return false }
        defer { close(pinned) }
        guard let id = mapID(pinned) else { return false }
        return id == mapID(fd)
    }

    /// Each map marked for pinning: its pin path and fd.
    private func pinnedMaps() -> [(path: String, fd: Int32)] {
        var maps: [(String, Int32)] = []
        var map = bpf_object__next_map(object, nil)
        while let m = map {
            defer { map = bpf_object__next_map(object, m) }
            if let path = bpf_map__pin_path(m) { maps.append((String(cString: path), bpf_map__fd(m))) }
        }
        return maps
    }

    private static func mapID(_ fd: Int32) -> UInt32? {
        var info = bpf_map_info()
        var len = UInt32(MemoryLayout<bpf_map_info>.size)
        return bpf_obj_get_info_by_fd(fd, &info, &len) == 0 ? info.id : nil
    }
}

/// A map an earlier run pinned and this load replaced, kept open to carry its contents over.
/// Owns its fd.
public final class ReplacedMap: @unchecked Sendable {
    public let map: BPFMap
    public let keySize: UInt32
    public let valueSize: UInt32

    init(name: String, fd: Int32, keySize: UInt32, valueSize: UInt32, maxEntries: UInt32) {
        map = BPFMap(name: name, fd: fd, maxEntries: maxEntries)
        self.keySize = keySize
        self.valueSize = valueSize
    }

    deinit {
        close(map.fd)
    }
}

/// A map fd with typed accessors. Keys and values are the C structs of `masq_abi.h`.
public struct BPFMap: Sendable {
    public let name: String
    public let fd: Int32
    public let maxEntries: UInt32

    /// A map known by fd, e.g. one opened from its pin with bpf_obj_get; the caller owns the fd.
    public init(name: String, fd: Int32, maxEntries: UInt32) {
        self.name = name
        self.fd = fd
        self.maxEntries = maxEntries
    }

    public func update<K: BitwiseCopyable, V: BitwiseCopyable>(_ key: K, _ value: V, flags: UInt64 = UInt64(BPF_ANY)) throws {
        var key = key
        var value = value
        if bpf_map_update_elem(fd, &key, &value, flags) != 0 {
            throw BPFError("update", "map \(name)", errno: errno)
        }
    }

    /// The value under `key`, or nil when there is none.
    public func lookup<K: BitwiseCopyable, V: BitwiseCopyable>(_ key: K, as: V.Type = V.self) throws -> V? {
        var key = key
        let value = UnsafeMutablePointer<V>.allocate(capacity: 1)
        defer { value.deallocate() }
        if bpf_map_lookup_elem(fd, &key, value) != 0 {
            if errno == ENOENT { return nil }
            throw BPFError("lookup", "map \(name)", errno: errno)
        }
        return value.pointee
    }

    /// Per-CPU maps: one value per possible CPU.
    public func lookupPerCPU<K: BitwiseCopyable, V: BitwiseCopyable>(_ key: K, as: V.Type = V.self) throws -> [V] {
        let cpus = Int(libbpf_num_possible_cpus())
        guard cpus > 0 else { throw BPFError("count CPUs", "map \(name)", errno: -Int32(cpus)) }
        var key = key
        // The kernel rounds each per-CPU value up to 8 bytes.
        let stride = (MemoryLayout<V>.size + 7) & ~7
        let raw = UnsafeMutableRawPointer.allocate(byteCount: stride * cpus, alignment: 8)
        defer { raw.deallocate() }
        if bpf_map_lookup_elem(fd, &key, raw) != 0 {
            throw BPFError("lookup", "map \(name)", errno: errno)
        }
        return (0..<cpus).map { raw.load(fromByteOffset: $0 * stride, as: V.self) }
    }

    /// Deletes `key`; returns false when it was not there.
    @discardableResult
    public func delete<K: BitwiseCopyable>(_ key: K) throws -> Bool {
        var key = key
        if bpf_map_delete_elem(fd, &key) != 0 {
            if errno == ENOENT { return false }
            throw BPFError("delete", "map \(name)", errno: errno)
        }
        return true
    }

    /// Every key in the map (a snapshot taken by walking it).
    public func keys<K: BitwiseCopyable>(as: K.Type = K.self) throws -> [K] {
        var result: [K] = []
        let current = UnsafeMutablePointer<K>.allocate(capacity: 1)
        let next = UnsafeMutablePointer<K>.allocate(capacity: 1)
        defer { current.deallocate(); next.deallocate() }
        var first = true
        while true {
            let err = bpf_map_get_next_key(fd, first ? nil : current, next)
            if err != 0 {
                if errno == ENOENT { return result }
                throw BPFError("iterate", "map \(name)", errno: errno)
            }
            result.append(next.pointee)
            current.pointee = next.pointee
            first = false
        }
    }

    /// Every (key, value) pair, skipping keys deleted while walking.
    public func entries<K: BitwiseCopyable, V: BitwiseCopyable>(key: K.Type = K.self, value: V.Type = V.self) throws -> [(K, V)] {
        try keys(as: K.self).compactMap { key in
            try lookup(key, as: V.self).map { (key, $0) }
        }
    }
}
