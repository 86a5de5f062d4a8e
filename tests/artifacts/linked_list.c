/* A linked list of nodes holding strings, dumped with gcore by test_typed_cli.py.
 * HEAD points at the first node; each node is {next, name, number} (64-bit: next at
 * offset 0, name at 8, number at 16).  Prints the address of HEAD, then waits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct node {
    struct node *next;
    char *name;
    long number;
};

struct node *HEAD;
static const char *const names[] = {"alpha", "bravo", "charlie", "delta", "echo"};

int main(void)
{
    struct node **link = &HEAD;
    for (int i = 0; i < 5; i++) {
        struct node *node = malloc(sizeof *node);
        if (node == NULL)
            return 1;
        node->name = strdup(names[i]);
        node->number = 11L * (i + 1);
        node->next = NULL;
        *link = node;
        link = &node->next;
    }
    printf("%p\n", (void *)&HEAD);
    fflush(stdout);
    for (;;)
        pause();
}
