package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/omnigate/omnigate/builtin/session"
)

// stdin is read by "user add -password-stdin" (tests replace it).
var stdin io.Reader = os.Stdin

func runUser(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "add" {
		fmt.Fprintln(stderr, "usage: omnigate user add -username NAME [-role ROLE] [-file ./data/users.yaml] [-scopes a,b] [-patient ID] [-password-stdin]")
		return 2
	}
	fs := flag.NewFlagSet("user add", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("file", "./data/users.yaml", "user directory file (created if missing)")
	username := fs.String("username", "", "user name (required)")
	role := fs.String("role", "", "role: physician, nurse, admin, patient, … (required for a new user)")
	scopes := fs.String("scopes", "", "comma-separated scopes, e.g. user/*.rs,openid (an existing user's are kept unless given)")
	patient := fs.String("patient", "", "patient id, for patient users (an existing user's is kept unless given)")
	fromStdin := fs.Bool("password-stdin", false, "read the password from the first line of standard input (default: generate one and print it)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "omnigate user add: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *username == "" {
		fmt.Fprintln(stderr, "omnigate user add: -username is required")
		return 2
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	password := ""
	if *fromStdin {
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && line == "" {
			fmt.Fprintln(stderr, "omnigate user add: no password on standard input")
			return 1
		}
		password = strings.TrimRight(line, "\r\n")
	} else {
		password = session.RandomPassword()
	}
	var changed []string
	existed, err := session.EditUser(*file, *username, password, 0, func(u *session.User, exists bool) error {
		if !exists && *role == "" {
			return fmt.Errorf("no user %q in %s: -role is required to add one", *username, *file)
		}
		if set["role"] && *role != u.Role {
			u.Role = *role
			changed = append(changed, "role")
		}
		if set["patient"] && *patient != u.Patient {
			u.Patient = *patient
			changed = append(changed, "patient")
		}
		if set["scopes"] {
			var ss []string
			for _, s := range strings.Split(*scopes, ",") {
				if s = strings.TrimSpace(s); s != "" {
					ss = append(ss, s)
				}
			}
			if !slices.Equal(ss, u.Scopes) {
				u.Scopes = ss
				changed = append(changed, "scopes")
			}
		}
		*role = u.Role
		return nil
	})
	if err != nil {
		fmt.Fprintln(stderr, "omnigate user add:", err)
		return 1
	}
	if existed {
		changed = append(changed, "password")
		fmt.Fprintf(stdout, "user %s (%s) updated in %s: %s changed, the rest kept\n", *username, *role, *file, strings.Join(changed, ", "))
	} else {
		fmt.Fprintf(stdout, "user %s (%s) added to %s\n", *username, *role, *file)
	}
	if !*fromStdin {
		fmt.Fprintf(stdout, "password: %s\n(shown only now)\n", password)
	}
	fmt.Fprintln(stdout, "A running gateway picks the change up at the next login.")
	return 0
}
