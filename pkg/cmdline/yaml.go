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
//	line 6: commands.result_grace: cannot unmarshal !!str `5sec` into time.Duration
func DecodeYAML(b []byte, out any) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	err := dec.Decode(out)
	if err == nil || errors.Is(err, io.EOF) {
		return nil
	}
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err // not YAML at all: the parser's message has the line
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
	return fmt.Sprintf("line %d: %s: %s", line, key, m[2])
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
