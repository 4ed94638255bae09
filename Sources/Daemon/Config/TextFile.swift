@preconcurrency import Glibc
import Foundation

/// A config file's text, read with errors that say what is wrong (no such file, a directory,
/// permission denied, not UTF-8) rather than Foundation's generic ones.
enum TextFile {
    struct ReadError: Error, CustomStringConvertible {
        var description: String
    }

    /// The file's text; nil when there is no such file.
    static func read(_ path: String) throws(ReadError) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT { return nil }
            throw ReadError(description: String(cString: strerror(errno)))
        }
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        var info = stat()
        if fstat(fd, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR {
            throw ReadError(description: "is a directory")
        }
        let data: Data
        do {
            data = try handle.readToEnd() ?? Data()
        } catch {
            throw ReadError(description: "\(error.localizedDescription)")
        }
        guard let text = String(bytes: data, encoding: .utf8) else {
            throw ReadError(description: "is not UTF-8 text")
        }
        return text
    }
}
