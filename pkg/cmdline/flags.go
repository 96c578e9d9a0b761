package cmdline

import (
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// ConfigFlag binds a flag to a configuration key, for the last layer of the loader (defaults,
// YAML, environment, flags).
type ConfigFlag struct {
	Key   string // the field's dotted YAML path: "mqtt_addr", "twofa.mode", "run.fleet"
	Flag  string // the flag's name; "" is the key's last part with dashes ("fleet")
	Usage string // help; a `word` in backquotes names the value ("listen `address`")
}

func (f ConfigFlag) name() string {
	if f.Flag != "" {
		return f.Flag
	}
	key := f.Key[strings.LastIndexByte(f.Key, '.')+1:]
	return strings.ReplaceAll(key, "_", "-")
}

// AddConfigFlags defines on fs one flag per entry of flags, typed after its field in cfg (a
// pointer to a configuration struct holding the defaults), its help showing the field's
// default. A value is read as ApplyEnv reads a variable: "5s" for a duration, a type's own
// UnmarshalYAML or UnmarshalText; a list flag may be repeated or take a comma-separated list;
// a bool flag needs no value. It panics for a key cfg does not have, a programming error.
func AddConfigFlags(fs *pflag.FlagSet, cfg any, flags ...ConfigFlag) {
	root := reflect.ValueOf(cfg).Elem()
	for _, f := range flags {
		field, err := fieldByKey(root, f.Key)
		if err != nil {
			panic("cmdline.AddConfigFlags: " + err.Error())
		}
		v := &fieldValue{v: reflect.New(field.Type()).Elem()}
		v.v.Set(field)
		fl := fs.VarPF(v, f.name(), "", f.Usage)
		if field.Kind() == reflect.Bool {
			fl.NoOptDefVal = "true"
		}
	}
}

// ApplyFlags copies into dst (a pointer to the configuration struct) the value of each flag of
// flags that was given: on the command line, or from its variable under Execute
// (fs.Changed). fs is the command's cmd.Flags(), where AddConfigFlags defined them.
func ApplyFlags(fs *pflag.FlagSet, dst any, flags ...ConfigFlag) error {
	root := reflect.ValueOf(dst).Elem()
	for _, f := range flags {
		fl := fs.Lookup(f.name())
		if fl == nil || !fl.Changed {
			continue
		}
		v, ok := fl.Value.(*fieldValue)
		if !ok {
			return fmt.Errorf("--%s was not defined by AddConfigFlags", f.name())
		}
		field, err := fieldByKey(root, f.Key)
		if err != nil {
			return err
		}
		field.Set(v.v)
	}
	return nil
}

// fieldByKey finds the field of a struct by its dotted YAML path.
func fieldByKey(v reflect.Value, key string) (reflect.Value, error) {
	for _, part := range strings.Split(key, ".") {
		if v.Kind() == reflect.Pointer {
			if v.IsNil() {
				v.Set(reflect.New(v.Type().Elem()))
			}
			v = v.Elem()
		}
		if v.Kind() != reflect.Struct {
			return reflect.Value{}, fmt.Errorf("no key %s", key)
		}
		found := false
		for i := range v.NumField() {
			k, inline, ok := yamlKey(v.Type().Field(i))
			if ok && !inline && k == part {
				v, found = v.Field(i), true
				break
			}
		}
		if !found {
			return reflect.Value{}, fmt.Errorf("no key %s", key)
		}
	}
	return v, nil
}

// fieldValue is a pflag.Value holding a value of a configuration field's type.
type fieldValue struct {
	v       reflect.Value
	changed bool // a list flag given again appends
}

func (f *fieldValue) Set(s string) error {
	if f.v.Kind() == reflect.Slice && f.changed && !isLeaf(f.v.Type()) {
		more := reflect.New(f.v.Type()).Elem()
		if err := setFromEnv(more, s); err != nil {
			return err
		}
		f.v.Set(reflect.AppendSlice(f.v, more))
		return nil
	}
	if err := setFromEnv(f.v, s); err != nil {
		return err
	}
	f.changed = true
	return nil
}

func (f *fieldValue) String() string {
	if !f.v.IsValid() {
		return ""
	}
	switch x := f.v.Interface().(type) {
	case time.Duration:
		return x.String()
	case []string:
		return strings.Join(x, ",")
	}
	if f.v.Kind() == reflect.Slice {
		parts := make([]string, f.v.Len())
		for i := range parts {
			parts[i] = fmt.Sprint(f.v.Index(i).Interface())
		}
		return strings.Join(parts, ",")
	}
	return fmt.Sprint(f.v.Interface())
}

func (f *fieldValue) Type() string {
	switch f.v.Interface().(type) {
	case time.Duration:
		return "duration"
	}
	switch f.v.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "bool"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "int"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "uint"
	case reflect.Float32, reflect.Float64:
		return "float"
	case reflect.Slice:
		return "list"
	}
	return "value"
}

// Walk calls f for every command of the tree under root, root included, with the arguments
// that reach it ("admin", "vehicle", "list"); for tests that check every command's --help.
// Hidden commands are skipped.
func Walk(root *cobra.Command, f func(cmd *cobra.Command, path []string)) {
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		f(c, path)
		for _, sub := range c.Commands() {
			if !sub.Hidden {
				walk(sub, append(append([]string(nil), path...), sub.Name()))
			}
		}
	}
	walk(root, nil)
}
