package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/omnigate/omnigate/builtin/session"
)

// stdin is read by "user add -password-stdin" (tests replace it).
var stdin io.Reader = os.Stdin

func runUser(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "add" {
		fmt.Fprintln(stderr, "usage: omnigate user add -username NAME -role ROLE [-file ./data/users.yaml] [-scopes a,b] [-patient ID] [-password-stdin]")
		return 2
	}
	fs := flag.NewFlagSet("user add", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("file", "./data/users.yaml", "user directory file (created if missing)")
	username := fs.String("username", "", "user name (required)")
	role := fs.String("role", "", "role: physician, nurse, admin, patient, … (required)")
	scopes := fs.String("scopes", "", "comma-separated scopes, e.g. user/*.rs,openid")
	patient := fs.String("patient", "", "patient id, for patient users")
	fromStdin := fs.Bool("password-stdin", false, "read the password from the first line of standard input (default: generate one and print it)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if *username == "" || *role == "" {
		fmt.Fprintln(stderr, "omnigate user add: -username and -role are required")
		return 2
	}
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
	u := session.User{Username: *username, Role: *role, Patient: *patient}
	for _, s := range strings.Split(*scopes, ",") {
		if s = strings.TrimSpace(s); s != "" {
			u.Scopes = append(u.Scopes, s)
		}
	}
	if err := session.AddUser(*file, u, password, 0); err != nil {
		fmt.Fprintln(stderr, "omnigate user add:", err)
		return 1
	}
	fmt.Fprintf(stdout, "user %s (%s) written to %s\n", *username, *role, *file)
	if !*fromStdin {
		fmt.Fprintf(stdout, "password: %s\n(shown only now)\n", password)
	}
	fmt.Fprintln(stdout, "A running gateway picks the change up at the next login.")
	return 0
}
