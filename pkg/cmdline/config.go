package cmdline

import (
	"encoding"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"

	"gopkg.in/yaml.v3"
)

// LoadFile overlays the YAML file at path on dst, a pointer to a configuration struct that
// holds its package's DefaultConfig(): keys the file does not name keep their value. It is
// strict: an unknown key is an error, and every error names the file, the line and the dotted
// key ("configs/gateway.yaml: line 12: twofa.modee: unknown key"), an indentation error too.
func LoadFile(path string, dst any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	if err := DecodeYAML(b, dst); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

// ApplyEnv sets the fields of dst (a pointer to a configuration struct) named by variables of
// environ ("KEY=value", as os.Environ returns them): the variable of a field is prefix and the
// field's YAML key path joined by "_", upper case: GATEWAY_TWOFA_MODE for twofa.mode. A value is
// read as the YAML file would read it (durations "5s", numbers, booleans, a type's own
// UnmarshalYAML); a list takes comma-separated items. Maps and lists of structs have no
// variables. A field's `env:"NAME"` tag, where present, names its variable instead (a name
// operators already use); `env:"-"` gives it none. Every bad value is reported, naming the
// variable.
func ApplyEnv(prefix string, dst any, environ []string) error {
	v := reflect.ValueOf(dst)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("cmdline.ApplyEnv: want a pointer to a struct, got %T", dst)
	}
	env := envMap(environ)
	var errs []error
	applyEnvStruct(v.Elem(), strings.ToUpper(strings.TrimSuffix(prefix, "_")), env, &errs)
	return errors.Join(errs...)
}

var (
	yamlUnmarshaler = reflect.TypeFor[yaml.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// EnvVars lists the variables ApplyEnv reads for the struct that dst points to, in field order:
// for help texts and documentation.
func EnvVars(prefix string, dst any) []string {
	var names []string
	walkEnv(reflect.TypeOf(dst).Elem(), strings.ToUpper(strings.TrimSuffix(prefix, "_")), func(name string) {
		names = append(names, name)
	})
	return names
}

func walkEnv(t reflect.Type, prefix string, f func(string)) {
	for i := range t.NumField() {
		sf := t.Field(i)
		name, ok := envName(sf, prefix)
		if !ok {
			continue
		}
		ft := sf.Type
		if ft.Kind() == reflect.Pointer && ft.Elem().Kind() == reflect.Struct && !isLeaf(ft) {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && !isLeaf(ft) {
			walkEnv(ft, name, f)
			continue
		}
		if name, ok := envTag(sf, name); ok && envSettable(ft) {
			f(name)
		}
	}
}

// envName is a field's variable, or for a struct the prefix of its fields' variables: prefix
// and the field's YAML key, or prefix alone for an inlined field; false for a field YAML does
// not see.
func envName(sf reflect.StructField, prefix string) (string, bool) {
	key, inline, ok := yamlKey(sf)
	if !ok {
		return "", false
	}
	if inline {
		return prefix, true
	}
	return prefix + "_" + strings.ToUpper(key), true
}

// yamlKey returns the key of a field as yaml.v3 names it, whether it is inlined, and false for
// a field YAML does not see.
func yamlKey(sf reflect.StructField) (key string, inline, ok bool) {
	if !sf.IsExported() {
		return "", false, false
	}
	tag := sf.Tag.Get("yaml")
	if tag == "-" {
		return "", false, false
	}
	name, opts, _ := strings.Cut(tag, ",")
	if strings.Contains(","+opts+",", ",inline,") {
		return "", true, true
	}
	if name == "" {
		name = strings.ToLower(sf.Name)
	}
	return name, false, true
}

// envTag returns the variable of a leaf field: its env tag, else derived; false for env:"-".
func envTag(sf reflect.StructField, derived string) (string, bool) {
	switch tag := sf.Tag.Get("env"); tag {
	case "":
		return derived, true
	case "-":
		return "", false
	default:
		return tag, true
	}
}

// isLeaf reports whether a struct (or pointer) type decodes itself from one scalar.
func isLeaf(t reflect.Type) bool {
	p := t
	if t.Kind() != reflect.Pointer {
		p = reflect.PointerTo(t)
	}
	return p.Implements(yamlUnmarshaler) || p.Implements(textUnmarshaler)
}

func envSettable(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Map, reflect.Func, reflect.Chan, reflect.Interface, reflect.Array:
		return isLeaf(t)
	case reflect.Slice:
		e := t.Elem()
		return isLeaf(t) || e.Kind() != reflect.Struct && e.Kind() != reflect.Map && e.Kind() != reflect.Slice || isLeaf(e)
	case reflect.Struct:
		return isLeaf(t)
	}
	return true
}

func applyEnvStruct(v reflect.Value, prefix string, env map[string]string, errs *[]error) {
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		name, ok := envName(sf, prefix)
		if !ok {
			continue
		}
		fv := v.Field(i)
		ft := sf.Type
		if ft.Kind() == reflect.Pointer && ft.Elem().Kind() == reflect.Struct && !isLeaf(ft) {
			if !hasPrefix(env, name+"_") {
				continue
			}
			if fv.IsNil() {
				fv.Set(reflect.New(ft.Elem()))
			}
			applyEnvStruct(fv.Elem(), name, env, errs)
			continue
		}
		if ft.Kind() == reflect.Struct && !isLeaf(ft) {
			applyEnvStruct(fv, name, env, errs)
			continue
		}
		name, ok = envTag(sf, name)
		if !ok {
			continue
		}
		val, set := env[name]
		if !set || !envSettable(ft) {
			continue
		}
		if err := setFromEnv(fv, val); err != nil {
			*errs = append(*errs, fmt.Errorf("%s=%q: %v", name, val, err))
		}
	}
}

func hasPrefix(env map[string]string, p string) bool {
	for k := range env {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// setFromEnv decodes val into the field v as a YAML scalar (or a comma-separated list),
// without YAML's syntax, so that any characters are taken as they are.
func setFromEnv(v reflect.Value, val string) error {
	if v.Kind() == reflect.String && !isLeaf(v.Type()) {
		v.SetString(val)
		return nil
	}
	node := &yaml.Node{Kind: yaml.ScalarNode, Value: val}
	if v.Kind() == reflect.Slice && !isLeaf(v.Type()) {
		node = &yaml.Node{Kind: yaml.SequenceNode}
		for _, item := range strings.Split(val, ",") {
			if item = strings.TrimSpace(item); item != "" {
				node.Content = append(node.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: scalarTag(v.Type().Elem()), Value: item})
			}
		}
	} else {
		node.Tag = scalarTag(v.Type())
	}
	p := reflect.New(v.Type())
	if err := node.Decode(p.Interface()); err != nil {
		return errors.New(plainTypeError(strings.TrimPrefix(strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n  "), "line 0: ")))
	}
	v.Set(p.Elem())
	return nil
}

// scalarTag makes a string element a string whatever it looks like ("off", "123"); other types
// are resolved as YAML resolves a plain scalar.
func scalarTag(t reflect.Type) string {
	if t.Kind() == reflect.String && !isLeaf(t) {
		return "!!str"
	}
	return ""
}
