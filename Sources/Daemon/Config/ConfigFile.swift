import API
import Foundation
import Yams

/// Reads the daemon's config file (YAML, which JSON also is) into raw settings by key.
public enum ConfigFile {
    public static func load(path: String) throws(ConfigErrors) -> [ConfigKey: RawSetting] {
        let text: String?
        do {
            text = try TextFile.read(path)
        } catch {
            throw ConfigErrors(errors: [ConfigError(nil, "config file \(path): cannot be read (\(error))")])
        }
        guard let text else {
            throw ConfigErrors(errors: [ConfigError(nil, "config file \(path): cannot be read (no such file)")])
        }
        return try parse(text, path: path)
    }

    public static func parse(_ text: String, path: String) throws(ConfigErrors) -> [ConfigKey: RawSetting] {
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            // One line: Yams' own description adds the offending text and a caret on more.
            let line = error.line.map { " (line \($0))" } ?? ""
            throw ConfigErrors(errors: [ConfigError(nil, "config file \(path)\(line): \(error.summary)")])
        } catch {
            throw ConfigErrors(errors: [ConfigError(nil, "config file \(path): \(error)")])
        }
        guard let node else { return [:] }
        guard let mapping = node.mapping else {
            throw ConfigErrors(errors: [ConfigError(nil, "config file \(path): expected a mapping of config keys")])
        }
        var result: [ConfigKey: RawSetting] = [:]
        var errors: [ConfigError] = []
        /// Where each key was first given: YAML keys are unique, and a second one would
        /// silently win over the first.
        var given: [ConfigKey: Int?] = [:]
        for (keyNode, value) in mapping {
            let line = keyNode.mark.map { " (line \($0.line))" } ?? ""
            guard let name = keyNode.string, let key = ConfigKey(rawValue: name) else {
                errors.append(ConfigError(nil, "config file \(path)\(line): unknown key '\(keyNode.string ?? "?")'"))
                continue
            }
            if let first = given[key] {
                errors.append(ConfigError(key, "config file \(path)\(line): given twice\(first.map { " (first on line \($0))" } ?? "")"))
                continue
            }
            given[key] = keyNode.mark?.line
            switch value {
            case .scalar(let scalar):
                // A YAML null (`devices:` with nothing after it) is an empty list or unset value.
                result[key] = scalar.string == "~" || scalar.string == "null" ? .scalar("") : .scalar(scalar.string)
            case .sequence(let seq):
                var items: [String] = []
                for item in seq {
                    guard let s = item.scalar?.string else {
                        errors.append(ConfigError(key, "config file \(path)\(line): list items must be plain values"))
                        continue
                    }
                    items.append(s)
                }
                result[key] = .list(items)
            default:
                errors.append(ConfigError(key, "config file \(path)\(line): expected a value or a list, not a mapping"))
            }
        }
        if !errors.isEmpty { throw ConfigErrors(errors: errors) }
        return result
    }
}
