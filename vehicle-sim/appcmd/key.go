package appcmd

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"telematics/pkg/api"
	"telematics/pkg/cmdline"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// keyCommand is `vehicle-sim app key create|show|pair|list|share|revoke|remove-user`.
func keyCommand(g *globals, env Env) *cobra.Command {
	key := &cobra.Command{
		Use:   "key COMMAND",
		Short: "this phone's key: create, show, pair with a car, list, share, revoke, remove a user",
		RunE: func(*cobra.Command, []string) error {
			return cmdline.UsageError("need create, show, pair, list, share, revoke or remove-user")
		},
	}
	key.AddCommand(keyCreate(g, env), keyShow(g, env), keyPair(g, env), keyList(g, env), keyShare(g, env),
		keyRevoke(g, env), keyRemoveUser(g, env))
	return key
}

// keyFail adds what to do to a refusal of key command sub.
func keyFail(sub string, err error) error {
	var ae *api.Error
	if errors.As(err, &ae) {
		if h := keyHint(sub, ae.Reason); h != "" {
			return fmt.Errorf("%w\n%s", err, h)
		}
	}
	return err
}

// liveSession loads the login session the gateway's key API needs.
func liveSession(g *globals) (*phone.Session, error) {
	s, err := LoadSession(g.session)
	if err != nil {
		return nil, err
	}
	if time.Now().UnixMilli() >= s.ExpiresAtMs {
		return nil, errors.New("the session has expired: log in again")
	}
	return s, nil
}

// exactly returns a cobra argument check that wants n arguments, saying which with what.
func exactly(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return cmdline.UsageError("need %s", what)
		}
		return nil
	}
}

func noArgs(_ *cobra.Command, args []string) error {
	if len(args) != 0 {
		return cmdline.UsageError("takes no arguments")
	}
	return nil
}

func keyCreate(g *globals, env Env) *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:   "create",
		Short: "make this phone's key (the private half stays in the --key file, mode 0600); prints its key id",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			var old, key *sign.Signer
			var err error
			if force {
				old, _ = phone.LoadKey(g.key)
				key, err = phone.ReplaceKey(g.key)
			} else {
				key, err = phone.CreateKey(g.key)
			}
			if errors.Is(err, phone.ErrKeyExists) {
				return fmt.Errorf("%s already holds a key; replacing it unpairs this phone from its cars. "+
					"Use --force to replace it anyway, or --key FILE for another one", g.key)
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(env.Stdout, key.KID())
			fmt.Fprintf(env.Stderr, "phone key %s created in %s (mode 0600; its private half never leaves this file)\n", key.KID(), g.key)
			if old != nil && old.KID() != key.KID() {
				fmt.Fprintf(env.Stderr, "it replaces key %s: revoke that one on its cars (vehicle-sim app key revoke VIN --totp CODE -- %s)\n", old.KID(), old.KID())
			}
			fmt.Fprintln(env.Stderr, "next: vehicle-sim app key pair VIN --totp CODE")
			return nil
		},
	}
	c.Flags().BoolVar(&force, "force", false, "replace an existing key (the cars it was paired with keep it until it is revoked)")
	return c
}

func keyShow(g *globals, env Env) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "show",
		Short: "this phone's key id and public key",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			key, err := loadKey(g.key)
			if err != nil {
				return err
			}
			pub, err := sign.EncodePublic(key.Public())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(env, map[string]string{"key_id": key.KID(), "public_key": pub, "path": g.key})
			}
			fmt.Fprintf(env.Stdout, "key id:     %s\npublic key: %s\nfile:       %s\n", key.KID(), pub, g.key)
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, `print {"key_id", "public_key", "path"}`)
	return c
}

func keyPair(g *globals, env Env) *cobra.Command {
	var totp, label string
	var asJSON bool
	c := &cobra.Command{
		Use:   "pair VIN",
		Short: "make this phone a key of car VIN (yours, or one its owner shared with you)",
		Args:  exactly(1, "VIN"),
		RunE: func(cmd *cobra.Command, args []string) error {
			vin, err := vinArg(args[0])
			if err != nil {
				return err
			}
			key, err := loadKey(g.key)
			if err != nil {
				return err
			}
			sess, err := liveSession(g)
			if err != nil {
				return err
			}
			k, err := phone.PairKey(cmd.Context(), sess, key, vin, label, totp)
			if err != nil {
				return keyFail("pair", err)
			}
			if asJSON {
				return printJSON(env, k)
			}
			fmt.Fprintf(env.Stdout, "key %s is now a key of %s: role %s, channels %s, %s\n",
				k.ID, vin, k.Role, strings.Join(k.Channels, ","), validity(k.NotAfterMs))
			fmt.Fprintln(env.Stdout, "the car can use it over the local link once it has the new whitelist (see: vehicle-sim app key list "+vin+")")
			return nil
		},
	}
	c.Flags().StringVar(&totp, "totp", "", "TOTP `CODE` (key changes need one unless the gateway's policy says otherwise)")
	c.Flags().StringVar(&label, "label", "", "a name for this phone on the car's key list")
	c.Flags().BoolVar(&asJSON, "json", false, "print the new whitelist entry as JSON")
	return c
}

func keyList(g *globals, env Env) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "list [VIN]",
		Short: "keys per car, the whitelist version and the version the car acknowledged",
		Long: `Lists the keys of one car, or of every car you hold a role on, with the whitelist version
and the version the car acknowledged: a revocation counts on the car only once it is
acknowledged. Owners see every key, others their own.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 1 {
				return cmdline.UsageError("takes at most one VIN")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			var vin string
			if len(args) == 1 {
				v, err := vinArg(args[0])
				if err != nil {
					return err
				}
				vin = v
			}
			sess, err := liveSession(g)
			if err != nil {
				return err
			}
			var cars []api.KeyStatus
			if vin != "" {
				st, err := sess.Client().ListKeys(ctx, vin)
				if err != nil {
					return keyFail("list", err)
				}
				if asJSON {
					return printJSON(env, st)
				}
				cars = []api.KeyStatus{st}
			} else {
				cars, err = sess.Client().ListAllKeys(ctx)
				var ae *api.Error
				if errors.As(err, &ae) && (ae.Reason == protocol.ReasonBadRequest || ae.Status == 404 || ae.Status == 405) {
					return errors.New("the gateway lists keys per car: vehicle-sim app key list VIN")
				}
				if err != nil {
					return keyFail("list", err)
				}
				if asJSON {
					return printJSON(env, cars)
				}
			}
			mine := ""
			if key, err := phone.LoadKey(g.key); err == nil {
				mine = key.KID()
			}
			printKeyTable(env, cars, mine)
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the gateway's answer as JSON")
	return c
}

func keyShare(g *globals, env Env) *cobra.Command {
	var role, until, channels, totp string
	var asJSON bool
	c := &cobra.Command{
		Use:   "share VIN USER --role driver|valet",
		Short: "let USER pair a phone with your car, as a driver or a valet",
		Args:  exactly(2, "VIN and USER"),
		RunE: func(cmd *cobra.Command, args []string) error {
			vin, err := vinArg(args[0])
			if err != nil {
				return err
			}
			sh := api.ShareRequest{VIN: vin, User: args[1], Role: protocol.Role(role)}
			if !protocol.ValidUser(sh.User) {
				return cmdline.UsageError("%q is not a user name", sh.User)
			}
			if sh.Role != protocol.RoleDriver && sh.Role != protocol.RoleValet {
				return cmdline.UsageError("--role must be driver or valet")
			}
			if until != "" {
				t, err := time.Parse(time.RFC3339, until)
				if err != nil {
					return cmdline.UsageError("--until %q is not an RFC 3339 time (e.g. 2030-01-31T18:00:00Z)", until)
				}
				if !t.After(time.Now()) {
					return cmdline.UsageError("--until %s is in the past", until)
				}
				sh.NotAfterMs = t.UnixMilli()
			}
			if sh.Channels, err = parseChannels(channels); err != nil {
				return cmdline.UsageError("--channels: %v", err)
			}
			sess, err := liveSession(g)
			if err != nil {
				return err
			}
			sh.TOTP = totp
			out, err := sess.Client().ShareKey(cmd.Context(), sh)
			if err != nil {
				return keyFail("share", err)
			}
			if asJSON {
				return printJSON(env, out)
			}
			fmt.Fprintf(env.Stdout, "%s may now use %s: role %s, channels %s, %s\n",
				out.User, out.VIN, out.Role, strings.Join(out.Channels, ","), validity(out.NotAfterMs))
			fmt.Fprintf(env.Stdout, "%s pairs their own phone with: vehicle-sim app key pair %s --totp CODE\n", out.User, out.VIN)
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&role, "role", "", "driver or valet")
	f.StringVar(&until, "until", "", "the share (and the keys paired under it) ends then, RFC 3339; default never")
	f.StringVar(&channels, "channels", protocol.ChannelCloud+","+protocol.ChannelLocal, "where the keys may be used: cloud, local or both")
	f.StringVar(&totp, "totp", "", "TOTP `CODE`")
	f.BoolVar(&asJSON, "json", false, "print the share as JSON")
	return c
}

func keyRevoke(g *globals, env Env) *cobra.Command {
	var totp string
	var allowLast, keepShare, asJSON bool
	c := &cobra.Command{
		Use:   "revoke VIN KEYID",
		Short: "take a key off the car's whitelist; a driver's or valet's last key ends their share",
		Long: `Takes key KEYID off car VIN's whitelist. A driver's or valet's last key ends their share
unless --keep-share; the car's last owner key only with --allow-last-owner. A key id that starts
with "-" goes after "--": vehicle-sim app key revoke VIN -- -AbC…`,
		Args: exactly(2, "VIN and KEYID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			vin, err := vinArg(args[0])
			if err != nil {
				return err
			}
			sess, err := liveSession(g)
			if err != nil {
				return err
			}
			rv, err := sess.Client().RevokeKey(cmd.Context(), api.RevokeRequest{VIN: vin, KeyID: args[1], TOTP: totp, AllowLastOwner: allowLast, KeepShare: keepShare})
			if err != nil {
				return keyFail("revoke", err)
			}
			if asJSON {
				return printJSON(env, rv)
			}
			fmt.Fprintf(env.Stdout, "key %s revoked on %s in whitelist version %d\n", rv.KeyID, rv.VIN, rv.Version)
			if rv.ShareEnded {
				fmt.Fprintf(env.Stdout, "it was %s's last key: their share of %s ended; they pair again only if you share it again (--keep-share keeps it)\n", rv.User, rv.VIN)
			}
			fmt.Fprintf(env.Stdout, "the car refuses it once it acknowledges version %d (see: vehicle-sim app key list %s)\n", rv.Version, rv.VIN)
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&totp, "totp", "", "TOTP `CODE`")
	f.BoolVar(&allowLast, "allow-last-owner", false, "allow revoking the car's last owner key (nobody can manage its keys afterwards)")
	f.BoolVar(&keepShare, "keep-share", false, "when this is the last key of a driver or valet, keep their share (they may pair another phone)")
	f.BoolVar(&asJSON, "json", false, "print the gateway's answer as JSON")
	return c
}

func keyRemoveUser(g *globals, env Env) *cobra.Command {
	var totp string
	var asJSON bool
	c := &cobra.Command{
		Use:   "remove-user VIN USER",
		Short: "remove a driver or valet from your car: all their keys revoked, their share ended",
		Args:  exactly(2, "VIN and USER"),
		RunE: func(cmd *cobra.Command, args []string) error {
			vin, err := vinArg(args[0])
			if err != nil {
				return err
			}
			if !protocol.ValidUser(args[1]) {
				return cmdline.UsageError("%q is not a user name", args[1])
			}
			sess, err := liveSession(g)
			if err != nil {
				return err
			}
			rc, err := sess.Client().RemoveUser(cmd.Context(), api.RemoveUserRequest{VIN: vin, User: args[1], TOTP: totp})
			if err != nil {
				return keyFail("remove-user", err)
			}
			if asJSON {
				return printJSON(env, rc)
			}
			fmt.Fprintf(env.Stdout, "%s removed from %s: %s revoked, their share ended\n", rc.User, rc.VIN, cmdline.Plural(rc.KeysChanged, "key"))
			if rc.Version != 0 {
				fmt.Fprintf(env.Stdout, "the car refuses their keys once it acknowledges version %d (see: vehicle-sim app key list %s)\n", rc.Version, rc.VIN)
			}
			return nil
		},
	}
	c.Flags().StringVar(&totp, "totp", "", "TOTP `CODE`")
	c.Flags().BoolVar(&asJSON, "json", false, "print the gateway's answer as JSON")
	return c
}

// parseChannels reads "cloud,local".
func parseChannels(s string) ([]string, error) {
	var out []string
	for _, c := range strings.Split(s, ",") {
		c = strings.TrimSpace(c)
		if c != protocol.ChannelCloud && c != protocol.ChannelLocal {
			return nil, fmt.Errorf("%q is not a channel (cloud, local)", c)
		}
		if !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	return out, nil
}

// printKeyTable prints each car's whitelist state and keys; mine marks this phone's key.
func printKeyTable(env Env, cars []api.KeyStatus, mine string) {
	if len(cars) == 0 {
		fmt.Fprintln(env.Stdout, "no cars")
		return
	}
	listedMine := false
	for i, st := range cars {
		if i > 0 {
			fmt.Fprintln(env.Stdout)
		}
		sync := "the car has it"
		switch {
		case st.Version == 0:
			sync = "no whitelist issued yet"
		case !st.InSync:
			sync = fmt.Sprintf("NOT YET ON THE CAR: it has version %d; until it acknowledges %d, the car decides by the older list", st.AckedVersion, st.Version)
		}
		fmt.Fprintf(env.Stdout, "%s  whitelist version %d, acknowledged %d (%s)\n", st.VIN, st.Version, st.AckedVersion, sync)
		if len(st.Keys) == 0 {
			fmt.Fprintln(env.Stdout, "  no keys")
			continue
		}
		tw := tabwriter.NewWriter(env.Stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  KEY ID\tUSER\tROLE\tCHANNELS\tVALID UNTIL\tREVOKED\tLABEL")
		for _, k := range st.Keys {
			mark := " "
			if k.ID == mine {
				mark, listedMine = "*", true
			}
			fmt.Fprintf(tw, "%s %s\t%s\t%s\t%s\t%s\t%s\t%s\n", mark, k.ID, k.User, k.Role, strings.Join(k.Channels, ","),
				fmtMs(k.NotAfterMs), fmtMs(k.RevokedAtMs), orDefault(k.Label, "-"))
		}
		_ = tw.Flush()
	}
	if listedMine {
		fmt.Fprintln(env.Stdout, "(* this phone's key)")
	}
}

// fmtMs formats unix milliseconds for people, in local time ("2030-01-31 19:00:00 UTC+1");
// 0 (none) is "-". --json keeps the milliseconds.
func fmtMs(ms int64) string { return cmdline.Time(ms) }

// validity describes a not_after bound.
func validity(notAfterMs int64) string {
	if notAfterMs == 0 {
		return "no expiry"
	}
	return "valid until " + fmtMs(notAfterMs)
}

// keyHint says what to do about a refusal of a key command.
func keyHint(sub string, r protocol.Reason) string {
	switch r {
	case protocol.ReasonForbidden:
		switch sub {
		case "pair":
			return "you hold no role on this car: its owner must share it with you first (vehicle-sim app key share VIN YOU --role …)"
		case "share":
			return "only the car's owner may share it"
		case "revoke":
			return "only the car's owner may revoke its keys; the last owner key only with --allow-last-owner"
		case "remove-user":
			return "only the car's owner removes its drivers and valets; an owner is removed by the admin"
		}
	case protocol.ReasonVehicleUnknown:
		return "the gateway knows no such car"
	case protocol.ReasonKeyUnknown:
		return "the car has no such key: see vehicle-sim app key list VIN"
	}
	return reasonHint(r)
}

func orDefault(v, def string) string {
	if v != "" {
		return v
	}
	return def
}
