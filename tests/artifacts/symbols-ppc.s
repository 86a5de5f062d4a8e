# Symbols of every kind a symbol table holds, for the symbol-table tests: global, local,
# weak, weak undefined, absolute, common (SHN_COMMON in an object), a file symbol and the
# section symbols the assembler adds.  Assembled for PowerPC as ELF32 and ELF64, big- and
# little-endian, by build_symbols.py.
	.file	"symbols-ppc.s"
	.text
	.globl	_start			# address 0 in an object, 0x01000000 linked
_start:
	nop
	bl	helper
helper:
	blr
	.weak	weak_entry
weak_entry:
	nop
	.data
	.globl	ppc_table
ppc_table:
	.long	0x11223344
	.weak	undefined_elsewhere
	.long	undefined_elsewhere
local_word:
	.long	5
	.globl	ppc_absolute
	.set	ppc_absolute, 0x12345678
	.comm	ppc_common, 16, 4
