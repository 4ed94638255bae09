import Foundation

extension FileHandle {
    /// Writes one line to stderr (errors a user must read, before logging is set up).
    static func standardErrorLine(_ text: String) {
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }
}
