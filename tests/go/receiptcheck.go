// receiptcheck verifies an Axon receipt with the Go team's own packages,
// golang.org/x/mod/sumdb/note (signed notes) and golang.org/x/mod/sumdb/tlog
// (RFC 6962 proofs): an implementation that is not ours.
//
//	receiptcheck VKEY RECEIPT [OLD_CHECKPOINT CONSISTENCY_JSON]
//
// Prints "ok ..." lines and exits 0, or prints the failure and exits 1.
// Built in GOPATH mode against Debian's golang-golang-x-mod-dev (no network).
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func fail(format string, args ...interface{}) {
	fmt.Printf("FAILED: "+format+"\n", args...)
	os.Exit(1)
}

func hash(b64 string) tlog.Hash {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != tlog.HashSize {
		fail("bad hash %q", b64)
	}
	var h tlog.Hash
	copy(h[:], raw)
	return h
}

// checkpoint opens a signed checkpoint note and returns origin, size and root.
func checkpoint(text []byte, verifier note.Verifier) (string, int64, tlog.Hash) {
	n, err := note.Open(text, note.VerifierList(verifier))
	if err != nil {
		fail("note.Open: %v", err)
	}
	lines := strings.Split(strings.TrimSuffix(n.Text, "\n"), "\n")
	if len(lines) != 3 {
		fail("checkpoint body has %d lines", len(lines))
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		fail("checkpoint size: %v", err)
	}
	return lines[0], size, hash(lines[2])
}

func main() {
	if len(os.Args) != 3 && len(os.Args) != 5 {
		fail("usage: receiptcheck VKEY RECEIPT [OLD_CHECKPOINT CONSISTENCY_JSON]")
	}
	vkey, _ := os.ReadFile(os.Args[1])
	verifier, err := note.NewVerifier(strings.TrimSpace(string(vkey)))
	if err != nil {
		fail("note.NewVerifier: %v", err)
	}
	receipt, err := os.ReadFile(os.Args[2])
	if err != nil {
		fail("%v", err)
	}
	head, signed, found := bytes.Cut(receipt, []byte("\n\n"))
	if !found {
		fail("no blank line in the receipt")
	}
	lines := strings.Split(string(head), "\n")
	if lines[0] != "c2sp.org/tlog-proof@v1" || !strings.HasPrefix(lines[1], "extra ") ||
		!strings.HasPrefix(lines[2], "index ") {
		fail("not a tlog-proof@v1 with extra data")
	}
	event, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(lines[1], "extra "))
	if err != nil {
		fail("extra: %v", err)
	}
	index, err := strconv.ParseInt(strings.TrimPrefix(lines[2], "index "), 10, 64)
	if err != nil {
		fail("index: %v", err)
	}
	var proof tlog.RecordProof
	for _, line := range lines[3:] {
		proof = append(proof, hash(line))
	}
	origin, size, root := checkpoint(signed, verifier)
	fmt.Printf("ok signature by %s verifies (sumdb/note)\n", verifier.Name())
	if err := tlog.CheckRecord(proof, size, root, index, tlog.RecordHash(event)); err != nil {
		fail("tlog.CheckRecord: %v", err)
	}
	fmt.Printf("ok record %d is in %s of size %d (sumdb/tlog)\n", index, origin, size)
	if len(os.Args) == 5 {
		old, _ := os.ReadFile(os.Args[3])
		oldOrigin, oldSize, oldRoot := checkpoint(old, verifier)
		if oldOrigin != origin {
			fail("the old checkpoint is of %s", oldOrigin)
		}
		raw, _ := os.ReadFile(os.Args[4])
		var consistency struct {
			OldSize int64    `json:"old_size"`
			NewSize int64    `json:"new_size"`
			Proof   []string `json:"proof"`
		}
		if err := json.Unmarshal(raw, &consistency); err != nil {
			fail("consistency JSON: %v", err)
		}
		if consistency.OldSize != oldSize || consistency.NewSize != size {
			fail("consistency proof is for %d..%d", consistency.OldSize, consistency.NewSize)
		}
		var treeProof tlog.TreeProof
		for _, h := range consistency.Proof {
			treeProof = append(treeProof, hash(h))
		}
		if err := tlog.CheckTree(treeProof, size, root, oldSize, oldRoot); err != nil {
			fail("tlog.CheckTree: %v", err)
		}
		fmt.Printf("ok tree %d extends tree %d (sumdb/tlog)\n", size, oldSize)
	}
}
