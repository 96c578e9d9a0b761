package cmdline

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// DecodeYAML overlays the YAML document b on out, strictly: an unknown key is an error, so a
// misspelt setting does not silently keep its default. An empty document sets nothing. Each
// error names the key as the file spells it, with its dotted path, and the line:
//
//	line 2: twofa.modee: unknown key
//	line 6: commands.result_grace: cannot unmarshal "5sec": want a duration such as 30s, 5m or 2h
//	line 81: did not find expected key (check this line's indentation: …)
func DecodeYAML(b []byte, out any) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	err := dec.Decode(out)
	if err == nil || errors.Is(err, io.EOF) {
		return nil
	}
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return syntaxError(b, err)
	}
	keys := keyLines(b)
	msgs := make([]string, len(te.Errors))
	for i, e := range te.Errors {
		msgs[i] = nameKey(e, keys)
	}
	return errors.New(strings.Join(msgs, "; "))
}

var (
	lineMsg    = regexp.MustCompile(`^line (\d+): (.*)$`)
	unknownKey = regexp.MustCompile(`^field \S+ not found in type `)
)

// nameKey puts the key's path into one of yaml.v3's "line N: …" messages, and says "unknown
// key" instead of naming a Go type.
func nameKey(msg string, keys map[int]string) string {
	m := lineMsg.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	line, _ := strconv.Atoi(m[1])
	key, ok := keys[line]
	if !ok {
		return msg
	}
	if unknownKey.MatchString(m[2]) {
		return fmt.Sprintf("line %d: %s: unknown key", line, key)
	}
	return fmt.Sprintf("line %d: %s: %s", line, key, plainTypeError(m[2]))
}

var typeErr = regexp.MustCompile("cannot unmarshal !!(\\w+)(?: `(.*)`)? into (\\S+)")

// plainTypeError says what a value should have been where yaml.v3 names its tags and Go's
// types ("cannot unmarshal !!str `5sec` into time.Duration" becomes "cannot unmarshal "5sec":
// want a duration such as 30s, 5m or 2h"): the file, the variable and the flag alike.
func plainTypeError(msg string) string {
	return typeErr.ReplaceAllStringFunc(msg, func(s string) string {
		m := typeErr.FindStringSubmatch(s)
		want, got := "a value of another kind", fmt.Sprintf("%q", m[2])
		switch m[1] {
		case "seq":
			got = "a list"
		case "map":
			got = "a mapping"
		}
		switch t := m[3]; {
		case t == "time.Duration":
			want = "a duration such as 30s, 5m or 2h"
		case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"):
			want = "a whole number"
		case strings.HasPrefix(t, "float"):
			want = "a number"
		case t == "bool":
			want = "true or false"
		case strings.HasPrefix(t, "[]"):
			want = "a list"
		case strings.HasPrefix(t, "map["):
			want = "a mapping"
		case t == "string":
			want = "a single value"
		}
		return fmt.Sprintf("cannot unmarshal %s: want %s", got, want)
	})
}

// keyLines maps each line that holds a mapping key to the key's dotted path.
func keyLines(b []byte) map[int]string {
	var doc yaml.Node
	if yaml.Unmarshal(b, &doc) != nil {
		return nil
	}
	keys := map[int]string{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				keys[k.Line] = p
				walk(v, p)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(c, fmt.Sprintf("%s[%d]", path, i))
			}
		}
	}
	walk(&doc, "")
	return keys
}

var syntaxMsg = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// maxRescanLines bounds the rescan of syntaxError (quadratic in the lines of the file).
const maxRescanLines = 5000

// syntaxError gives a YAML syntax error the line of the problem. yaml.v3 reports the line where
// the enclosing block starts ("yaml: line 8: did not find expected key" for a key mis-indented
// on line 81), so the line is found again: the first prefix of the document, from that line
// on, that fails with the same message ends on the problem's line.
func syntaxError(b []byte, err error) error {
	m := syntaxMsg.FindStringSubmatch(err.Error())
	if m == nil {
		return err
	}
	blockLine, _ := strconv.Atoi(m[1])
	msg := m[2]
	lines := strings.SplitAfter(string(b), "\n")
	if len(lines) > maxRescanLines {
		return fmt.Errorf("line %d: %s", blockLine, msg)
	}
	for n := max(blockLine, 1); n <= len(lines); n++ {
		var doc yaml.Node
		perr := yaml.Unmarshal([]byte(strings.Join(lines[:n], "")), &doc)
		if perr == nil {
			continue
		}
		pm := syntaxMsg.FindStringSubmatch(perr.Error())
		if pm == nil || pm[2] != msg {
			continue
		}
		if n == blockLine {
			break
		}
		return fmt.Errorf("line %d: %s (check its indentation%s)", n, msg, sibling(lines[:n-1]))
	}
	return fmt.Errorf("line %d: %s", blockLine, msg)
}

// sibling names the key nearest above the problem, whose indentation the problem's line
// should match or nest under: " against listeners.tcp on line 9", or "" when there is none.
// prefix is the valid part of the document before the problem. (The first key of the block
// yaml.v3 reports can be far off: a mis-indented first key of a block makes the next line the
// problem, and yaml.v3 then names the document's first key.)
func sibling(prefix []string) string {
	line, key := 0, ""
	for l, k := range keyLines([]byte(strings.Join(prefix, ""))) {
		if l > line {
			line, key = l, k
		}
	}
	if key == "" {
		return ""
	}
	return fmt.Sprintf(" against %s on line %d", key, line)
}
